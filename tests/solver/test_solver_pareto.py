"""Pareto sweep: monotone, made of ILP optima, with the problem's own optimum marked."""

from __future__ import annotations

import pytest
from solver_brute import brute_force
from solver_random import bpw

from solver.ilp import solve
from solver.pareto import pareto
from solver.problem import Budget, Layer, Option, PairTerm, Problem


def _problem(n: int = 7, pairs: bool = False) -> Problem:
    layers = []
    for i in range(n):
        params = 500 * (i + 1) + 137 * (i % 3)
        trace = 1.0 + 0.7 * ((i * 5) % 7)
        layers.append(
            Layer(
                f"l{i}",
                params,
                {
                    (b, 16): Option(
                        trace * params * 2.0 ** (-2 * b),
                        {"size_bytes": params * bpw(b) / 8, "bops": params * 10.0 * b * 16},
                    )
                    for b in (2, 4, 8)
                },
            )
        )
    terms = []
    if pairs:
        for i in range(n - 1):
            a, b = layers[i], layers[i + 1]
            terms.append(
                PairTerm(
                    a.name,
                    b.name,
                    {
                        (ca, cb): 0.2 * (a.options[ca].omega * b.options[cb].omega) ** 0.5
                        for ca in a.options
                        for cb in b.options
                    },
                )
            )
    size = sum(x.params for x in layers) * 4.5 / 8
    bops = sum(x.params for x in layers) * 10.0 * 7 * 16
    return Problem(layers, [Budget("size_bytes", size), Budget("bops", bops)], pairs=terms)


@pytest.mark.parametrize("pairs", [False, True])
def test_frontier_is_monotone_optimal_and_marks_the_chosen_point(pairs):
    problem = _problem(pairs=pairs)
    points = pareto(problem, "size_bytes", points=8, mip_gap=0.0)

    assert len(points) >= 3
    costs = [p.cost for p in points]
    objectives = [p.objective for p in points]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)
    assert all(a > b for a, b in zip(objectives, objectives[1:]))

    chosen = [p for p in points if p.chosen]
    assert len(chosen) == 1
    allocation = solve(problem, mip_gap=0.0)
    assert chosen[0].objective == pytest.approx(allocation.objective, rel=1e-12)
    assert chosen[0].cost == pytest.approx(allocation.budget_use["size_bytes"][0], rel=1e-12)

    for point in points:
        # each point is the exact optimum with its own cost as the size limit
        at_cost = Problem(
            problem.layers, [Budget("size_bytes", point.cost), problem.budgets[1]], pairs=problem.pairs
        )
        best, _ = brute_force(at_cost)
        assert point.objective == pytest.approx(best, rel=1e-9)
        assert point.status == "optimal"
        assert point.cost <= point.budget * (1 + 1e-12)


def test_frontier_spans_the_smallest_and_largest_useful_cost():
    problem = _problem()
    points = pareto(problem, "size_bytes", points=6, mip_gap=0.0)
    bops_ok = Problem(problem.layers, [problem.budgets[1]])
    cheapest = min(
        sum(x.options[c].costs["size_bytes"] for x, c in zip(problem.layers, combo))
        for combo in _combos(bops_ok)
    )
    assert points[0].cost == pytest.approx(cheapest)
    best, _ = brute_force(bops_ok)
    assert points[-1].objective == pytest.approx(best)


def _combos(problem):
    import itertools

    from solver_brute import evaluate, fits

    for combo in itertools.product(*(sorted(x.options) for x in problem.layers)):
        choices = {x.name: c for x, c in zip(problem.layers, combo)}
        if fits(problem, evaluate(problem, choices)[1]):
            yield combo


def test_a_kind_that_is_not_a_budget_can_be_swept():
    problem = Problem(_problem().layers, [Budget("bops", 1e12)])
    points = pareto(problem, "size_bytes", points=5)
    assert points[0].cost < points[-1].cost
    assert sum(p.chosen for p in points) == 1


def test_infeasible_other_budgets_give_an_empty_frontier():
    problem = Problem(_problem().layers, [Budget("bops", 1.0)])
    assert pareto(problem, "size_bytes", points=4) == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="points"):
        pareto(_problem(), "size_bytes", points=1)
    with pytest.raises(ValueError, match="unknown budget kind"):
        pareto(_problem(), "flops")


def test_an_unreachable_own_budget_still_gets_a_frontier_without_a_chosen_point():
    base = _problem()
    problem = Problem(base.layers, [Budget("size_bytes", 1.0), base.budgets[1]])
    points = pareto(problem, "size_bytes", points=4)
    assert len(points) >= 2
    assert not any(p.chosen for p in points)
