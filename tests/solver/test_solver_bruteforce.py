"""The ILP's optimum equals brute-force enumeration on random small problems."""

from __future__ import annotations

import math

import pytest
from solver_brute import brute_force, evaluate, fits, ties_ok
from solver_random import random_problem

from solver.ilp import solve
from solver.milp import backend_available

SEEDS = range(60)


def _check(problem, allocation):
    best, _ = brute_force(problem)
    if math.isinf(best):
        assert allocation.status == "infeasible"
        assert allocation.explanation is not None
        return
    assert allocation.status == "optimal", allocation.explanation
    assert allocation.objective == pytest.approx(best, rel=1e-9, abs=1e-12)
    objective, use = evaluate(problem, dict(allocation.choices))
    assert objective == pytest.approx(allocation.objective, rel=1e-9, abs=1e-12)
    assert fits(problem, use)
    assert ties_ok(problem, dict(allocation.choices))
    for name, choice in problem.pins.items():
        assert allocation.choices[name] == choice
    for name, choices in problem.allowed.items():
        assert allocation.choices[name] in choices
    for kind, (used, limit) in allocation.budget_use.items():
        assert used == pytest.approx(use[kind], rel=1e-12)
        assert limit == problem.budget(kind).limit


@pytest.mark.parametrize("seed", SEEDS)
def test_matches_brute_force(seed):
    problem = random_problem(seed)
    _check(problem, solve(problem, mip_gap=0.0))


def test_random_problems_cover_every_feature():
    problems = [random_problem(seed) for seed in SEEDS]
    kinds = {b.kind for p in problems for b in p.budgets}
    assert kinds == {"avg_bits", "size_bytes", "bops", "latency_ms"}
    assert any(len(p.budgets) >= 2 for p in problems)
    assert any(p.pins for p in problems) and any(p.allowed for p in problems)
    assert any(p.pairs for p in problems)
    assert any(any(x.group for x in p.layers) for p in problems)
    assert any(any(c[1] == 8 for x in p.layers for c in x.options) for p in problems)
    statuses = {solve(p, mip_gap=0.0).status for p in problems[:30]}
    assert statuses == {"optimal", "infeasible"}


def test_default_gap_stays_within_tolerance():
    for seed in range(20):
        problem = random_problem(seed)
        best, _ = brute_force(problem)
        allocation = solve(problem)
        if math.isinf(best):
            continue
        assert allocation.objective <= best + 1e-4 * abs(best) + 1e-12
        assert allocation.gap is not None and allocation.gap <= 1e-4 + 1e-12


@pytest.mark.skipif(not backend_available("highs"), reason="highspy is not installed")
@pytest.mark.parametrize("seed", range(0, 60, 3))
def test_highs_gives_the_same_answers(seed):
    problem = random_problem(seed)
    cbc = solve(problem, mip_gap=0.0)
    highs = solve(problem, mip_gap=0.0, backend="highs")
    assert highs.backend == "highs"
    assert highs.status == cbc.status
    if cbc.objective is not None:
        assert highs.objective == pytest.approx(cbc.objective, rel=1e-9, abs=1e-12)
    _check(problem, highs)


def test_the_ilp_runs_when_presolve_cannot_decide():
    # many near-equal layers and one size budget: the bound leaves a core for the MIP
    from solver_random import contested_problem

    problem = contested_problem()
    allocation = solve(problem, mip_gap=0.0)
    best, _ = brute_force(problem)
    assert allocation.status == "optimal"
    assert allocation.certificate in ("mip", "bound")
    assert allocation.objective == pytest.approx(best, rel=1e-12)


def test_a_time_limit_gives_a_feasible_allocation_with_its_proven_gap():
    from solver_random import bpw

    from solver.problem import Budget, Layer, Option, Problem

    layers = [
        Layer(
            f"l{i}",
            1000 + 7 * i,
            {
                (b, 16): Option(
                    (1 + (i * 7) % 11) * (1000 + 7 * i) * 2.0 ** (-2 * b),
                    {"avg_bits": (1000 + 7 * i) * bpw(b), "bops": 50.0 * b * 16 * (1 + i % 3)},
                )
                for b in (2, 3, 4, 5, 6, 8, 16)
            },
        )
        for i in range(400)
    ]
    problem = Problem(layers, [Budget("avg_bits", 4.3), Budget("bops", 50.0 * 6 * 16 * 800)])
    allocation = solve(problem, time_limit_s=1e-4)
    assert allocation.status == "feasible"
    assert allocation.gap is not None and 0 < allocation.gap < 1
    assert allocation.lower_bound < allocation.objective
    for used, limit in allocation.budget_use.values():
        assert used <= limit * (1 + 1e-9)
