"""The integer program over the options that survive presolve, built and solved with PuLP.

Variables x[u, i] ∈ {0, 1} for every kept option i of a *core* unit (one with two or
more kept options); units with one kept option are constants. Pair terms between
two core units are linearised exactly in the aggregated (marginal) form:
y[i, j] >= 0 with Σ_j y[i, j] = x[u, i] and Σ_i y[i, j] = x[v, j], so y is the
product x[u, i]·x[v, j] at every integer point, and the LP relaxation is the
tightest of the product forms.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from dataclasses import dataclass

import numpy as np
import pulp

from solver.compiled import Compiled
from solver.watchdog import Overrun, call_with_deadline

BACKENDS = ("cbc", "highs")
OVERRUN_GRACE_S = 0.25
"""How long past its time limit a backend may run before the watchdog kills it
(plus 5% of the limit: process start and reading the solution back)."""
INLINE_VARIABLES = 500


def _variables(c: Compiled, keep: np.ndarray) -> int:
    """Variables of the program over ``keep``: options of core units and pair products."""
    counts = keep.sum(axis=1)
    core = counts > 1
    total = int(counts[core].sum())
    for p in c.pairs:
        if core[p.u] and core[p.v]:
            total += int(counts[p.u] * counts[p.v])
    return total


@dataclass(frozen=True, eq=False)
class MilpResult:
    status: str  # "optimal" | "feasible" | "infeasible" | "timeout"
    assign: np.ndarray | None


def backend_available(backend: str) -> bool:
    if backend == "cbc":
        return _cbc_path() is not None
    if backend == "highs":
        return pulp.HiGHS(msg=False).available()
    return False


def solve_core(
    c: Compiled,
    keep: np.ndarray,
    *,
    incumbent: np.ndarray | None,
    backend: str,
    time_limit_s: float,
    gap_abs: float | None,
    gap_rel: float,
) -> MilpResult:
    """Minimise Ω over the kept options of ``c`` subject to its finite budgets.

    The backend runs under a watchdog: a solve still running ``OVERRUN_GRACE_S``
    (+5%) past ``time_limit_s`` is killed and reported as "timeout". A program of at
    most ``INLINE_VARIABLES`` variables runs in this process: its root processing
    takes milliseconds, less than starting the watchdog's process.
    """
    counts = keep.sum(axis=1)
    if np.any(counts == 0) or _variables(c, keep) <= INLINE_VARIABLES:
        return _solve_core(c, keep, incumbent, backend, time_limit_s, gap_abs, gap_rel)
    try:
        return call_with_deadline(
            _solve_core,
            c,
            keep,
            incumbent,
            backend,
            time_limit_s,
            gap_abs,
            gap_rel,
            seconds=time_limit_s * 1.05 + OVERRUN_GRACE_S,
        )
    except Overrun:
        return MilpResult("timeout", None)


def _solve_core(c, keep, incumbent, backend, time_limit_s, gap_abs, gap_rel) -> MilpResult:
    counts = keep.sum(axis=1)
    if np.any(counts == 0):
        return MilpResult("infeasible", None)
    base = np.argmax(keep, axis=1)
    core = np.flatnonzero(counts > 1)
    active = np.flatnonzero(np.isfinite(c.rhs))
    units = np.arange(c.n_units)
    if not len(core):
        used = c.used(base)
        return MilpResult("optimal" if c.fits(used) else "infeasible", base)

    fixed = np.ones(c.n_units, dtype=bool)
    fixed[core] = False
    spread = np.where(keep, c.omega, np.nan)
    lo = np.nanmin(spread[core], axis=1)
    scale = float(np.mean(np.nanmax(spread[core], axis=1) - lo)) or 1.0
    linear = np.where(keep, c.omega, 0.0)
    for p in c.pairs:
        if fixed[p.u] and not fixed[p.v]:
            linear[p.v] += p.values[base[p.u], :]
        elif fixed[p.v] and not fixed[p.u]:
            linear[p.u] += p.values[:, base[p.v]]

    prob = pulp.LpProblem("bit_allocation", pulp.LpMinimize)
    x = {
        (u, i): _variable(prob, f"x_{u}_{i}", 0, 1, pulp.LpBinary)
        for u in core
        for i in np.flatnonzero(keep[u])
    }
    objective = [(var, (linear[u, i] - lo[np.searchsorted(core, u)]) / scale) for (u, i), var in x.items()]

    y_vars = []
    for n, p in enumerate(c.pairs):
        if fixed[p.u] or fixed[p.v]:
            continue
        rows, cols = np.flatnonzero(keep[p.u]), np.flatnonzero(keep[p.v])
        y = {
            (i, j): _variable(prob, f"y_{n}_{i}_{j}", 0, None, pulp.LpContinuous) for i in rows for j in cols
        }
        objective += [(var, p.values[i, j] / scale) for (i, j), var in y.items()]
        # constraint: y is the product of the two units' choices (row and column marginals)
        for i in rows:
            prob += pulp.lpSum(y[i, j] for j in cols) == x[p.u, i], f"pair_{n}_row_{i}"
        for j in cols:
            prob += pulp.lpSum(y[i, j] for i in rows) == x[p.v, j], f"pair_{n}_col_{j}"
        y_vars.append((p, y))
    prob.setObjective(pulp.LpAffineExpression(objective))

    # constraint: one choice per unit
    for u in core:
        prob += pulp.lpSum(x[u, i] for i in np.flatnonzero(keep[u])) == 1, f"one_{u}"

    # constraint: every finite budget, in sum form, minus what the fixed units use
    for k in active:
        spent = float(c.costs[k, units[fixed], base[fixed]].sum())
        norm = max(abs(float(c.rhs[k])), 1e-300)
        terms = [(var, c.costs[k, u, i] / norm) for (u, i), var in x.items() if c.costs[k, u, i]]
        rhs = (float(c.rhs[k]) - spent) / norm
        if terms:
            prob += pulp.LpAffineExpression(terms) <= rhs, f"budget_{c.kinds[k]}"
        elif rhs < -1e-9:
            return MilpResult("infeasible", None)

    warm = incumbent is not None and backend == "cbc"
    if warm:
        for (u, i), var in x.items():
            var.setInitialValue(1 if incumbent[u] == i else 0)
        for p, y in y_vars:
            for (i, j), var in y.items():
                var.setInitialValue(1 if (incumbent[p.u], incumbent[p.v]) == (i, j) else 0)

    gap = {"gapAbs": gap_abs / scale} if gap_abs is not None else {"gapRel": gap_rel}
    solver = _solver(backend, time_limit_s=time_limit_s, warm=warm, gap=gap)
    prob.solve(solver)

    status = _status(prob)
    if status in ("infeasible", "timeout"):
        return MilpResult(status, None)
    assign = base.copy()
    for u in core:
        kept = np.flatnonzero(keep[u])
        values = [x[u, i].value() or 0.0 for i in kept]
        assign[u] = kept[int(np.argmax(values))]
    return MilpResult(status, assign)


def _variable(prob: pulp.LpProblem, name: str, low, up, cat: str) -> pulp.LpVariable:
    """A variable attached to ``prob`` (PuLP >= 3.3); plain LpVariable on older PuLP."""
    if hasattr(prob, "add_variable"):
        return prob.add_variable(name, low, up, cat=cat)
    return pulp.LpVariable(name, low, up, cat=cat)


def _status(prob: pulp.LpProblem) -> str:
    """Map PuLP's (status, sol_status) to ours: a time limit with a solution is 'feasible'."""
    if prob.sol_status == pulp.LpSolutionOptimal and prob.status == pulp.LpStatusOptimal:
        return "optimal"
    if prob.sol_status == pulp.LpSolutionIntegerFeasible:
        return "feasible"
    if prob.status == pulp.LpStatusInfeasible or prob.sol_status == pulp.LpSolutionInfeasible:
        return "infeasible"
    return "timeout"


def _solver(backend: str, *, time_limit_s: float, warm: bool, gap: dict) -> pulp.LpSolver:
    if backend == "cbc":
        path = _cbc_path()
        if path is None:
            raise ValueError("backend 'cbc': no CBC binary found (PuLP's bundled one or 'cbc' on PATH)")
        return pulp.COIN_CMD(
            path=path, msg=False, timeLimit=max(time_limit_s, 0.01), warmStart=warm, threads=1, **gap
        )
    if backend == "highs":
        solver = pulp.HiGHS(msg=False, timeLimit=max(time_limit_s, 0.01), threads=1, **gap)
        if not solver.available():
            raise ValueError("backend 'highs' needs the highspy package: pip install highspy")
        _absorb_highs_banner()
        return solver
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


@functools.cache
def _absorb_highs_banner() -> None:
    """HiGHS prints a banner on C stdout the first time a solver is made, even with
    output off; make that first instance with fd 1 pointed at /dev/null so the CLI's
    JSON output stays clean."""
    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _cbc_path() -> str | None:
    bundled = pulp.apis.coin_api.PULP_CBC_CMD.pulp_cbc_path
    if os.path.isfile(bundled) and os.access(bundled, os.X_OK):
        return bundled
    return shutil.which("cbc")
