"""``bisect_quality``: search the size budget until the measured quality drop lands in [lo, hi].

The solver predicts Ω; ``evaluate(allocation) -> quality_drop`` measures the real
thing (e.g. accuracy drop of the fake-quantized model). The drop is taken to fall
as the budget grows. The search first evaluates the largest useful budget (the
best-Ω allocation): if even that drop is above ``hi`` the range is unreachable.
It then bisects between the smallest reachable budget and that one. An
allocation seen before is not evaluated again. It stops when a drop lands in
[lo, hi], after ``max_evals`` evaluations, or when no allocation is left between
a budget that is too small and one that is more than enough.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from solver.allocation import Allocation, format_cost
from solver.compiled import compile_problem
from solver.ilp import DEFAULT_MIP_GAP, solve
from solver.optimise import check_options, cost_range
from solver.problem import BUDGET_KINDS, Budget, Problem

_MAX_SOLVES = 200


@dataclass(frozen=True)
class Trial:
    budget: float  # the limit of ``kind`` solved at, in the user's units
    allocation: Allocation
    drop: float


@dataclass(frozen=True)
class BisectResult:
    trials: tuple[Trial, ...]  # every evaluation, in order
    reached: bool  # a drop landed in [lo, hi]
    best: Trial | None  # the smallest budget whose drop is <= hi (in range when reached)
    message: str


def bisect_quality(
    problem: Problem,
    evaluate: Callable[[Allocation], float],
    lo: float,
    hi: float,
    *,
    kind: str = "size_bytes",
    max_evals: int = 8,
    time_limit_s: float = 60,
    backend: str = "cbc",
    mip_gap: float = DEFAULT_MIP_GAP,
) -> BisectResult:
    if kind not in BUDGET_KINDS:
        raise ValueError(f"unknown budget kind {kind!r}; expected one of {BUDGET_KINDS}")
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"need finite lo <= hi, got lo={lo!r}, hi={hi!r}")
    if isinstance(max_evals, bool) or not isinstance(max_evals, int) or max_evals < 1:
        raise ValueError(f"max_evals must be an int >= 1, got {max_evals!r}")
    check_options(time_limit_s=time_limit_s, backend=backend, mip_gap=mip_gap)

    others = [b for b in problem.budgets if b.kind != kind]
    kinds = tuple(b.kind for b in others) + (kind,)
    c = compile_problem(problem, kinds)
    k = c.kind_index(kind)
    span = cost_range(c, k, backend=backend, time_limit_s=time_limit_s, mip_gap=mip_gap)
    if span is None:
        return BisectResult((), False, None, "infeasible: the other budgets cannot be met at any size")
    small, large = (c.to_user(k, value) for value in span)

    trials: list[Trial] = []
    seen: dict[tuple, float] = {}

    def trial(budget: float) -> float:
        allocation = solve(
            Problem(
                problem.layers,
                [*others, Budget(kind, budget)],
                problem.fixed_costs,
                problem.pins,
                problem.allowed,
                problem.pairs,
            ),
            time_limit_s=time_limit_s,
            backend=backend,
            mip_gap=mip_gap,
        )
        key = tuple(sorted(allocation.choices.items()))
        if key not in seen:
            seen[key] = float(evaluate(allocation))
            trials.append(Trial(budget, allocation, seen[key]))
        return seen[key]

    def result(reached: bool, message: str) -> BisectResult:
        fits = [t for t in trials if t.drop <= hi]
        pick = [t for t in fits if t.drop >= lo] if reached else fits
        chosen = min(pick, key=lambda t: t.budget) if pick else None
        return BisectResult(tuple(trials), reached, chosen, message)

    def label(budget: float) -> str:
        return format_cost(kind, budget)

    top, top_drop = large, trial(large)
    if top_drop > hi:
        return result(
            False,
            f"unreachable: even the best allocation ({label(large)}) drops {top_drop:.4g} > hi={hi:.4g}",
        )
    if top_drop >= lo:
        return result(True, f"drop {top_drop:.4g} in [{lo:.4g}, {hi:.4g}] at {label(large)}")
    bottom, bottom_drop = small, None  # drop at the smallest budget: not measured yet
    for _ in range(_MAX_SOLVES):
        if len(trials) >= max_evals:
            break
        if top - bottom <= 1e-9 * max(abs(top), 1.0):
            if bottom_drop is not None:
                return result(
                    False,
                    f"unreachable: no allocation between {label(bottom)} (drop {bottom_drop:.4g}) and "
                    f"{label(top)} (drop {top_drop:.4g}) lands in [{lo:.4g}, {hi:.4g}]",
                )
            bottom_drop = trial(small)
            if lo <= bottom_drop <= hi:
                return result(True, f"drop {bottom_drop:.4g} in [{lo:.4g}, {hi:.4g}] at {label(small)}")
            if bottom_drop < lo:
                return result(
                    False,
                    f"unreachable: the smallest allocation ({label(small)}) already drops only "
                    f"{bottom_drop:.4g} < lo={lo:.4g}",
                )
            continue
        mid = 0.5 * (bottom + top)
        drop = trial(mid)
        if lo <= drop <= hi:
            return result(True, f"drop {drop:.4g} in [{lo:.4g}, {hi:.4g}] at {label(mid)}")
        if drop > hi:
            bottom, bottom_drop = mid, drop
        else:
            top, top_drop = mid, drop
    return result(False, f"stopped after {len(trials)} evaluations without a drop in [{lo:.4g}, {hi:.4g}]")
