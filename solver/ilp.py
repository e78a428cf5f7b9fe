"""``solve(problem) -> Allocation``: the bit-allocation integer program.

Minimise Σ Ω[l][c]·x[l,c] (+ pair terms) over one choice per layer (tied layers
share it), subject to every budget at once. A Lagrangian bound first drops the
options that cannot be optimal, and often proves the incumbent optimal outright (see
``solver.bound``; pair terms within a few layers of each other are solved exactly by
``solver.chain``); PuLP with CBC (or HiGHS) solves what is left, under a watchdog
that kills it past ``time_limit_s`` (``solver.watchdog``). ``mip_gap`` is the relative
optimality tolerance, the same default as HiGHS, Gurobi and CPLEX; pass 0 to prove
exact optimality.
"""

from __future__ import annotations

import time

from solver.allocation import Allocation
from solver.compiled import Compiled, compile_problem
from solver.explain import explain
from solver.optimise import Outcome, check_options, optimise
from solver.problem import Problem

DEFAULT_MIP_GAP = 1e-4


def solve(
    problem: Problem,
    *,
    time_limit_s: float = 60,
    backend: str = "cbc",
    mip_gap: float = DEFAULT_MIP_GAP,
) -> Allocation:
    """Choose one option per layer minimising Ω under every budget of ``problem``.

    Status: "optimal" (proven within ``mip_gap``), "feasible" (a solution, stopped by
    the time limit), "infeasible" (with an ``explanation``), "timeout" (no solution
    in time).
    """
    check_options(time_limit_s=time_limit_s, backend=backend, mip_gap=mip_gap)
    if not isinstance(problem, Problem):
        raise ValueError(f"solve() needs a Problem, got {type(problem).__name__}")
    start = time.perf_counter()
    compiled = compile_problem(problem)
    left = max(time_limit_s - (time.perf_counter() - start), 0.01)  # compiling counts too
    outcome = optimise(compiled, backend=backend, time_limit_s=left, mip_gap=mip_gap)
    explanation = None
    if outcome.status == "infeasible":
        left = max(time_limit_s - (time.perf_counter() - start), 1.0)
        explanation = explain(problem, compiled, backend=backend, time_limit_s=left)
    return to_allocation(
        compiled, outcome, backend=backend, elapsed=time.perf_counter() - start, explanation=explanation
    )


def to_allocation(
    c: Compiled, outcome: Outcome, *, backend: str, elapsed: float, explanation=None
) -> Allocation:
    choices, use = {}, {}
    if outcome.assign is not None:
        choices = c.layer_choices(outcome.assign)
        used = c.used(outcome.assign)
        use = {
            kind: (c.to_user(k, float(used[k])), c.to_user(k, float(c.rhs[k])))
            for k, kind in enumerate(c.kinds)
        }
    return Allocation(
        status=outcome.status,
        objective=outcome.objective,
        choices=choices,
        budget_use=use,
        solve_time_s=elapsed,
        gap=outcome.gap,
        backend=backend,
        explanation=explanation,
        certificate=outcome.certificate,
        lower_bound=outcome.lower if outcome.objective is not None else None,
    )
