"""The pair-chain dynamic program: exact minimum, assignment and min-marginals."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from solver_random import random_problem

from solver.chain import Chain, bandwidth, fits
from solver.compiled import Compiled, PairBlock
from solver.ilp import solve


def _chain_problem(rng, n: int, width: int, window: int = 2) -> Compiled:
    omega = rng.normal(size=(n, width))
    if width > 1 and n > 1:
        omega[rng.integers(n), rng.integers(width)] = np.inf  # a unit with fewer choices
    pairs = tuple(
        PairBlock(u, v, rng.normal(size=(width, width)))
        for u in range(n)
        for v in range(u + 1, u + window + 1)
        if v < n and rng.random() < 0.7
    )
    return Compiled(
        names=tuple(f"u{i}" for i in range(n)),
        members=tuple((f"u{i}",) for i in range(n)),
        choices=(),
        omega=omega,
        kinds=(),
        costs=np.zeros((0, n, width)),
        rhs=np.zeros(0),
        pairs=pairs,
        conflicts=(),
        total_params=1,
        fixed=(),
    )


@pytest.mark.parametrize("seed", range(60))
def test_chain_matches_enumeration(seed):
    rng = np.random.default_rng(seed)
    window = (1, 2, 3)[seed % 3]
    c = _chain_problem(rng, int(rng.integers(1, 7)), int(rng.integers(1, 4)), window)
    n, width = c.omega.shape
    chain = Chain(c)
    unaries = np.stack([c.omega] + [c.omega + rng.normal(size=c.omega.shape) for _ in range(2)])
    values, assign = chain.minimise(unaries)  # 3 rows: backtracked as a batch
    for b in range(len(unaries)):  # 1 row: backtracked one row at a time
        value, (row,) = chain.minimise(unaries[b : b + 1])
        assert value[0] == pytest.approx(values[b])
        shifted = c.with_omega(unaries[b], c.pairs)
        assert shifted.objective(row) == pytest.approx(values[b])
    for b, unary in enumerate(unaries):
        shifted = c.with_omega(unary, c.pairs)
        best, marginal = np.inf, np.full((n, width), np.inf)
        for x in itertools.product(range(width), repeat=n):
            value = shifted.objective(np.array(x))
            best = min(best, value)
            for u in range(n):
                marginal[u, x[u]] = min(marginal[u, x[u]], value)
        assert values[b] == pytest.approx(best)
        assert shifted.objective(assign[b]) == pytest.approx(best)
        mm = chain.min_marginals(unary)
        assert np.array_equal(np.isfinite(mm), np.isfinite(marginal))
        assert np.allclose(mm[np.isfinite(mm)], marginal[np.isfinite(marginal)])


def test_too_many_states_are_refused():
    c = _chain_problem(np.random.default_rng(0), 6, 7)
    wide = c.with_omega(c.omega, (PairBlock(0, 4, np.ones((7, 7))),))
    assert bandwidth(wide) == 4 and not fits(wide)
    with pytest.raises(ValueError, match="states is over"):
        Chain(wide)


def test_window_two_pairs_are_proven_by_the_bound():
    # 300 layers, pairs (i, i+1) and (i, i+2), three budgets: the exact dual closes the gap
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "solver.py"
    spec = importlib.util.spec_from_file_location("bench_solver", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    allocation = solve(bench.synthetic(300, pairs=True, seed=3))
    assert allocation.status == "optimal"
    assert allocation.gap is not None and allocation.gap <= 1e-4


@pytest.mark.parametrize("seed", range(60, 100))
def test_more_random_problems_match_brute_force(seed):
    # the brute-force module checks everything; these seeds add problems where the
    # chain path (pairs within two units) and the general path both run
    from test_solver_bruteforce import _check

    problem = random_problem(seed)
    _check(problem, solve(problem, mip_gap=0.0))
