"""Explain an infeasible request: how small each budget can get, and which overrides block it."""

from __future__ import annotations

import numpy as np

from solver.allocation import Blocker, BudgetReach, Infeasible, format_cost
from solver.compiled import Compiled, compile_problem
from solver.optimise import optimise
from solver.problem import Problem, format_choice

_JOINT_TIME_S = 5.0


def explain(problem: Problem, c: Compiled, *, backend: str, time_limit_s: float) -> Infeasible:
    budgets = list(problem.budgets)
    alone = c.smallest()
    reach = []
    for b in budgets:
        k = c.kind_index(b.kind)
        reach.append(BudgetReach(b.kind, b.limit, float(c.to_user(k, float(alone[k])))))
    all_alone = all(r.reachable_alone for r in reach)
    if len(budgets) > 1 and all_alone and not c.conflicts:
        budget_s = min(_JOINT_TIME_S, time_limit_s) / len(budgets)
        reach = [_with_joint(c, r, backend=backend, time_limit_s=budget_s) for r in reach]

    blockers = []
    for what in ("pins", "allowed", "ties"):
        if not _has(problem, what):
            continue
        relaxed = compile_problem(problem, c.kinds, relax=frozenset({what}))
        if c.conflicts and not relaxed.conflicts:
            blockers.append(_contradiction(problem, c, what))
            continue
        if all_alone and not c.conflicts:
            outcome = optimise(
                relaxed, backend=backend, time_limit_s=min(_JOINT_TIME_S, time_limit_s), mip_gap=1.0 - 1e-9
            )
            if outcome.assign is not None:
                layers = _overridden(problem, what)
                blockers.append(
                    Blocker(
                        what,
                        layers,
                        None,
                        None,
                        None,
                        f"without the {what} on {_names(layers)} all budgets are met at once",
                    )
                )
            continue
        smallest_without = relaxed.smallest()
        for r in reach:
            k = c.kind_index(r.kind)
            without = c.to_user(k, smallest_without[k])
            if r.reachable_alone or without > r.limit * (1 + 1e-9):
                continue
            blockers.append(_blocker(problem, c, relaxed, what, k, r.limit, without))
    return Infeasible(tuple(reach), c.conflicts, tuple(blockers))


def _with_joint(c: Compiled, r: BudgetReach, *, backend: str, time_limit_s: float) -> BudgetReach:
    """Smallest value of one budget with the other budgets held (an ILP on costs)."""
    k = c.kind_index(r.kind)
    rhs = c.rhs.copy()
    rhs[k] = np.inf
    omega = np.where(np.isfinite(c.omega), c.costs[k], np.inf)
    outcome = optimise(
        c.with_omega(omega).with_rhs(rhs), backend=backend, time_limit_s=time_limit_s, mip_gap=0.0
    )
    if outcome.status != "optimal":
        return r
    return BudgetReach(r.kind, r.limit, r.smallest, c.to_user(k, outcome.objective))


def _has(problem: Problem, what: str) -> bool:
    if what == "pins":
        return bool(problem.pins)
    if what == "allowed":
        return bool(problem.allowed)
    return any(layer.group is not None for layer in problem.layers)


def _overridden(problem: Problem, what: str) -> tuple[str, ...]:
    if what == "pins":
        return tuple(problem.pins)
    if what == "allowed":
        return tuple(problem.allowed)
    return tuple(layer.name for layer in problem.layers if layer.group is not None)


def _names(layers) -> str:
    shown = list(layers)[:6]
    more = len(layers) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _contradiction(problem: Problem, c: Compiled, what: str) -> Blocker:
    layers = _overridden(problem, what)
    return Blocker(what, layers, None, None, None, f"dropping the {what} removes the conflict")


def _layer_extra(
    problem: Problem, c: Compiled, relaxed: Compiled, what: str, kind: str
) -> dict[str, tuple[float, float]]:
    """Per overridden layer: (its cost under the override, how much more that is than without)."""
    by_name = {layer.name: layer for layer in problem.layers}
    out = {}
    if what == "pins":
        for name, choice in problem.pins.items():
            layer = by_name[name]
            options = problem.allowed.get(name, frozenset(layer.options))
            cheapest = min(layer.options[ch].costs[kind] for ch in options)
            cost = layer.options[choice].costs[kind]
            out[name] = (cost, cost - cheapest)
    elif what == "allowed":
        for name, options in problem.allowed.items():
            layer = by_name[name]
            cost = min(layer.options[ch].costs[kind] for ch in options)
            out[name] = (cost, cost - min(o.costs[kind] for o in layer.options.values()))
    else:
        k = c.kind_index(kind)
        own = np.where(np.isfinite(relaxed.omega), relaxed.costs[k], np.inf).min(axis=1)
        own_of = {names[0]: float(own[u]) for u, names in enumerate(relaxed.members)}
        tied = np.where(np.isfinite(c.omega), c.costs[k], np.inf).min(axis=1)
        for u, members in enumerate(c.members):
            if len(members) > 1 and np.isfinite(tied[u]):
                extra = float(tied[u]) - sum(own_of[m] for m in members)
                for m in members:
                    out[m] = (float(tied[u]) / len(members), extra / len(members))
    return out


def _blocker(
    problem: Problem, c: Compiled, relaxed: Compiled, what: str, k: int, limit: float, without: float
) -> Blocker:
    kind = c.kinds[k]
    extra = _layer_extra(problem, c, relaxed, what, kind)
    ranked = sorted((name for name in extra if extra[name][1] > 0), key=lambda n: -extra[n][1])
    smallest = c.to_sum(k, limit)
    now = float(c.smallest()[k])
    named = []
    for name in ranked:
        named.append(name)
        now -= extra[name][1]
        if now <= smallest * (1 + 1e-9):
            break
    cost = sum(extra[name][0] for name in named)
    total = limit * c.total_params if kind == "avg_bits" else limit
    share = cost / total if total > 0 else None
    if what == "pins":
        listed = " and ".join(f"{n} {format_choice(problem.pins[n])}" for n in named[:6])
        if len(named) > 6:
            listed += f" and {len(named) - 6} more"
        head = f"pins on {listed}"
    elif what == "allowed":
        head = f"allowed sets of {_names(named)}"
    else:
        head = f"ties of {_names(named)}"
    use = f" use {share:.0%} of the {kind} budget" if share is not None else " block the budget"
    detail = f"{head}{use}; without {what} the smallest {kind} is {format_cost(kind, without)}"
    return Blocker(what, tuple(named), kind, share, without, detail)
