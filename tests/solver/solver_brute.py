"""Brute-force reference for small problems: enumerate every allocation, straight from the spec."""

from __future__ import annotations

import itertools
import math

from solver.problem import Problem


def candidates(problem: Problem, name: str) -> list:
    layer = next(x for x in problem.layers if x.name == name)
    if name in problem.pins:
        pin = problem.pins[name]
        # a pin outside the layer's allowed set is a contradiction: nothing is allowed
        return [pin] if pin in problem.allowed.get(name, layer.options) else []
    return sorted(problem.allowed.get(name, layer.options))


def evaluate(problem: Problem, choices: dict) -> tuple[float, dict]:
    """(objective, budget use in the user's units) of an allocation."""
    by_name = {x.name: x for x in problem.layers}
    objective = sum(by_name[n].options[c].omega for n, c in choices.items())
    for pair in problem.pairs:
        objective += pair.values.get((choices[pair.a], choices[pair.b]), 0.0)
    use = {}
    for b in problem.budgets:
        total = sum(by_name[n].options[c].costs[b.kind] for n, c in choices.items())
        if b.kind == "avg_bits":
            use[b.kind] = total / problem.total_params
        else:
            use[b.kind] = total + problem.fixed_costs.get(b.kind, 0.0)
    return objective, use


def fits(problem: Problem, use: dict) -> bool:
    return all(use[b.kind] <= b.limit * (1 + 1e-9) + 1e-12 for b in problem.budgets)


def ties_ok(problem: Problem, choices: dict) -> bool:
    groups: dict = {}
    for layer in problem.layers:
        if layer.group is not None:
            groups.setdefault(layer.group, set()).add(choices[layer.name])
    return all(len(s) == 1 for s in groups.values())


def brute_force(problem: Problem) -> tuple[float, dict | None]:
    """(best objective, its choices); (inf, None) when nothing fits."""
    names = [x.name for x in problem.layers]
    best, best_choices = math.inf, None
    for combo in itertools.product(*(candidates(problem, n) for n in names)):
        choices = dict(zip(names, combo))
        if not ties_ok(problem, choices):
            continue
        objective, use = evaluate(problem, choices)
        if fits(problem, use) and objective < best:
            best, best_choices = objective, choices
    return best, best_choices


def smallest(problem: Problem, kind: str) -> float:
    """Smallest reachable value of one budget kind alone (pins, allowed sets and ties in place)."""
    alone = Problem(problem.layers, [], problem.fixed_costs, problem.pins, problem.allowed)
    names = [x.name for x in problem.layers]
    by_name = {x.name: x for x in problem.layers}
    best = math.inf
    for combo in itertools.product(*(candidates(alone, n) for n in names)):
        choices = dict(zip(names, combo))
        if not ties_ok(alone, choices):
            continue
        total = sum(by_name[n].options[c].costs[kind] for n, c in choices.items())
        value = (
            total / problem.total_params if kind == "avg_bits" else total + problem.fixed_costs.get(kind, 0.0)
        )
        best = min(best, value)
    return best
