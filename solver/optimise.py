"""Minimise a compiled problem: quick infeasibility checks, presolve by bound, then the ILP."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from solver.bound import Bound, heuristic_keep, lagrangian_bound, with_incumbent
from solver.compiled import FEAS_RTOL, Compiled
from solver.milp import BACKENDS, solve_core

_TIGHTEN_ROUNDS = 3
_HEURISTIC_CORE = 40  # units in the quick integer program that improves the incumbent


@dataclass(frozen=True, eq=False)
class Outcome:
    status: str  # "optimal" | "feasible" | "infeasible" | "timeout"
    assign: np.ndarray | None
    objective: float | None
    lower: float  # proven lower bound on the optimum (-inf when unknown)
    certificate: str | None  # "mip" | "bound" | None
    bound: Bound | None = None  # the presolve bound, to seed a similar problem

    @property
    def gap(self) -> float | None:
        """Proven relative gap (objective - lower) / |objective|; None when unknown."""
        if self.objective is None or not math.isfinite(self.lower):
            return None
        return max(0.0, self.objective - self.lower) / max(abs(self.objective), 1e-12)


def check_options(*, time_limit_s: float, backend: str, mip_gap: float) -> None:
    if not isinstance(time_limit_s, (int, float)) or not time_limit_s > 0 or not math.isfinite(time_limit_s):
        raise ValueError(f"time_limit_s must be a positive number, got {time_limit_s!r}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if not isinstance(mip_gap, (int, float)) or not 0 <= mip_gap < 1:
        raise ValueError(f"mip_gap must be in [0, 1), got {mip_gap!r}")


def optimise(
    c: Compiled, *, backend: str, time_limit_s: float, mip_gap: float, start: Bound | None = None
) -> Outcome:
    """Minimise Ω over ``c`` under its finite budgets; ``start`` seeds the presolve bound."""
    t0 = time.perf_counter()
    if c.conflicts:
        return Outcome("infeasible", None, None, math.inf, None)
    alone = c.smallest()
    if np.any(alone > c.rhs + FEAS_RTOL * np.maximum(np.abs(c.rhs), 1.0)):
        return Outcome("infeasible", None, None, math.inf, None)

    bound = lagrangian_bound(c, close_gap=mip_gap, start=start, deadline=t0 + 0.8 * time_limit_s)
    if _proven(bound, mip_gap):
        return Outcome("optimal", bound.incumbent, bound.upper, bound.lower, "bound", bound)
    if bound.incumbent is not None and np.count_nonzero(bound.keep.sum(axis=1) > 1) > _HEURISTIC_CORE:
        # a small integer program over the most contested units: a better incumbent
        # shrinks the gap, and with it the core the exact program has to search
        quick = solve_core(
            c,
            heuristic_keep(bound, _HEURISTIC_CORE),
            incumbent=bound.incumbent,
            backend=backend,
            time_limit_s=max(min(1.0, time_limit_s / 4, t0 + time_limit_s - time.perf_counter()), 0.01),
            gap_abs=mip_gap * _magnitude(bound),
            gap_rel=mip_gap,
        )
        if quick.assign is not None and c.fits(c.used(quick.assign)):
            bound = with_incumbent(c, bound, quick.assign)
        if _proven(bound, mip_gap):
            return Outcome("optimal", bound.incumbent, bound.upper, bound.lower, "bound", bound)

    if bound.incumbent is not None and not bound.complete:
        # out of time before the bound could shrink the core: an integer program over
        # the whole problem would not finish in what is left
        return Outcome("feasible", bound.incumbent, bound.upper, bound.lower, None, bound)
    rhs = c.rhs.copy()
    for _ in range(_TIGHTEN_ROUNDS):
        left = time_limit_s - (time.perf_counter() - t0)
        if left <= 0:
            break
        result = solve_core(
            c.with_rhs(rhs),
            bound.keep,
            incumbent=bound.incumbent,
            backend=backend,
            time_limit_s=left,
            gap_abs=mip_gap * _magnitude(bound) if bound.incumbent is not None else None,
            gap_rel=mip_gap,
        )
        if result.assign is None:
            if result.status == "infeasible" and bound.incumbent is None:
                return Outcome("infeasible", None, None, math.inf, "mip")
            break
        used = c.used(result.assign)
        if not c.fits(used):
            # the solver's feasibility tolerance let a budget slip: tighten it and re-solve
            over = np.maximum(used - c.rhs, 0.0)
            rhs = rhs - 2 * over - FEAS_RTOL * np.maximum(np.abs(c.rhs), 1.0) * (over > 0)
            continue
        assign, value = result.assign, c.objective(result.assign)
        if bound.incumbent is not None and bound.upper < value:
            assign, value = bound.incumbent, bound.upper
        if result.status != "optimal":
            return Outcome("feasible", assign, value, bound.lower, None, bound)
        tolerance = mip_gap * (_magnitude(bound) if bound.incumbent is not None else abs(value))
        lower = max(bound.lower, value - tolerance)
        return Outcome("optimal", assign, value, lower, "mip", bound)

    if bound.incumbent is not None:
        return Outcome("feasible", bound.incumbent, bound.upper, bound.lower, None, bound)
    return Outcome("timeout", None, None, bound.lower, None, bound)


def _magnitude(bound: Bound) -> float:
    """|optimum| from below where the bound is known: an absolute gap that stays within mip_gap."""
    if math.isfinite(bound.lower) and bound.lower * bound.upper > 0:
        return min(abs(bound.lower), abs(bound.upper))
    return abs(bound.upper)


def _proven(bound: Bound, mip_gap: float) -> bool:
    """The incumbent is optimal within ``mip_gap``, or it is the only option left."""
    if bound.incumbent is None:
        return False
    closed = bound.upper - bound.lower <= mip_gap * max(abs(bound.upper), 1e-12)
    return closed or bool(np.all(bound.keep.sum(axis=1) == 1))


def cost_range(
    c: Compiled, k: int, *, backend: str, time_limit_s: float, mip_gap: float
) -> tuple[float, float] | None:
    """Sum-form cost of kind ``k`` from the cheapest allocation (the other budgets held)
    to the cost of the best-Ω one; None when the other budgets cannot be met."""
    rhs = c.rhs.copy()
    rhs[k] = math.inf
    opened = c.with_rhs(rhs)
    costs = np.where(np.isfinite(c.omega), c.costs[k], np.inf)
    cheapest = optimise(opened.with_omega(costs), backend=backend, time_limit_s=time_limit_s, mip_gap=0.0)
    if cheapest.assign is None:
        return None
    best = optimise(opened, backend=backend, time_limit_s=time_limit_s, mip_gap=mip_gap)
    return float(cheapest.objective), float(c.used(best.assign)[k])
