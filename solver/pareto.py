"""Pareto frontier of one budget kind against Ω, by a budget sweep.

The sweep runs the budget of ``kind`` over ``points`` evenly spaced limits from the
smallest reachable cost (with the other budgets held) to the cost of the best-Ω
allocation, solving the ILP at each limit. Each solve is seeded with the previous
point's multipliers and allocation, which is what keeps a 64-point sweep fast.
Every point is an ILP optimum within ``mip_gap`` (``status`` says "feasible"
where a time limit stopped a solve first). The frontier is made monotone (a
cheaper point's allocation also fits every larger limit) and reduced to
non-dominated points; the problem's own optimum is included and marked
``chosen=True``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from solver.compiled import Compiled, compile_problem
from solver.ilp import DEFAULT_MIP_GAP
from solver.optimise import Outcome, check_options, cost_range, optimise
from solver.problem import BUDGET_KINDS, Choice, Problem


@dataclass(frozen=True)
class ParetoPoint:
    cost: float  # used cost of ``kind`` in the user's units
    objective: float  # Ω of the allocation (pair terms included)
    choices: Mapping[str, Choice]
    budget: float  # the limit of ``kind`` this point was solved at
    status: str = "optimal"  # "optimal" within mip_gap, or "feasible" (time limit)
    chosen: bool = False


def pareto(
    problem: Problem,
    kind: str,
    *,
    points: int = 32,
    time_limit_s: float = 60,
    backend: str = "cbc",
    mip_gap: float = DEFAULT_MIP_GAP,
) -> list[ParetoPoint]:
    """Frontier of ``kind`` cost vs Ω, cheapest first; [] when the other budgets can't be met.

    When the problem's own ``kind`` budget is out of reach the frontier is still
    returned, with no point marked ``chosen``.
    """
    if kind not in BUDGET_KINDS:
        raise ValueError(f"unknown budget kind {kind!r}; expected one of {BUDGET_KINDS}")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"points must be an int >= 2, got {points!r}")
    check_options(time_limit_s=time_limit_s, backend=backend, mip_gap=mip_gap)
    deadline = time.perf_counter() + time_limit_s
    kinds = tuple(b.kind for b in problem.budgets)
    c = compile_problem(problem, kinds if kind in kinds else kinds + (kind,))
    k = c.kind_index(kind)

    def run(target: Compiled, *, start=None) -> Outcome:
        left = max(deadline - time.perf_counter(), 0.01)
        return optimise(target, backend=backend, time_limit_s=left, mip_gap=mip_gap, start=start)

    span = cost_range(c, k, backend=backend, time_limit_s=time_limit_s, mip_gap=mip_gap)
    if span is None:
        return []
    lo, hi = span
    chosen = run(c)

    found: list[tuple[float, Outcome]] = []
    start = None
    for limit in np.linspace(lo, max(hi, lo), points):
        rhs = c.rhs.copy()
        rhs[k] = limit
        outcome = run(c.with_rhs(rhs), start=start)
        if outcome.assign is not None:
            found.append((float(limit), outcome))
            start = outcome.bound
    if chosen.assign is not None:  # the problem's own budget of ``kind`` may be out of reach
        found.append((float(c.rhs[k]), chosen))
    return _frontier(c, k, found, chosen)


def _frontier(c: Compiled, k: int, found: list[tuple[float, Outcome]], chosen: Outcome) -> list[ParetoPoint]:
    """Monotone, non-dominated points, cheapest first, with the chosen one marked.

    Where a sweep point is at least as cheap and as good as the problem's own
    optimum (a tie, or within the gap), that point carries the mark.
    """
    rows = sorted(
        ((float(c.used(o.assign)[k]), o.objective, limit, o) for limit, o in found),
        key=lambda r: (r[0], r[1]),
    )
    out: list[ParetoPoint] = []
    for cost, objective, limit, outcome in rows:
        is_chosen = outcome is chosen
        if out and objective >= out[-1].objective:
            if is_chosen:
                out[-1] = replace(out[-1], chosen=True)
            continue
        out.append(
            ParetoPoint(
                cost=c.to_user(k, cost),
                objective=objective,
                choices=c.layer_choices(outcome.assign),
                budget=c.to_user(k, limit if np.isfinite(limit) else cost),
                status=outcome.status,
                chosen=is_chosen,
            )
        )
    return out
