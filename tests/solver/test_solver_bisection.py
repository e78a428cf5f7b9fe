"""Bisection on the size budget against a measured quality callback."""

from __future__ import annotations

import pytest
from solver_random import bpw

from solver.bisection import bisect_quality
from solver.problem import Budget, Layer, Option, Problem


def _problem(n: int = 24) -> Problem:
    layers = [
        Layer(
            f"l{i}",
            1000 + 113 * i,
            {
                (b, 16): Option(
                    (1 + i % 5) * (1000 + 113 * i) * 2.0 ** (-2 * b),
                    {"size_bytes": (1000 + 113 * i) * bpw(b) / 8, "avg_bits": (1000 + 113 * i) * bpw(b)},
                )
                for b in (2, 3, 4, 6, 8)
            },
        )
        for i in range(n)
    ]
    return Problem(layers, [Budget("avg_bits", 16.0)])


class Quality:
    """A synthetic, monotone quality drop: 2^-(average bits), counting calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, allocation) -> float:
        self.calls += 1
        return 2.0 ** -allocation.budget_use["avg_bits"][0]


def test_stops_inside_the_range():
    quality = Quality()
    result = bisect_quality(_problem(), quality, lo=2.0**-4.6, hi=2.0**-4.4, max_evals=12)
    assert result.reached
    assert 2.0**-4.6 <= result.best.drop <= 2.0**-4.4
    assert quality.calls == len(result.trials) <= 12
    assert result.trials[-1] is result.best
    assert "in [" in result.message
    # the search moved budgets in the right direction: larger budget, smaller drop
    budgets = [t.budget for t in result.trials]
    drops = [t.drop for t in result.trials]
    order = sorted(range(len(budgets)), key=budgets.__getitem__)
    assert [drops[i] for i in order] == sorted(drops, reverse=True)


def test_reports_a_range_below_what_any_allocation_reaches():
    result = bisect_quality(_problem(), Quality(), lo=0.0, hi=2.0**-9)
    assert not result.reached and result.best is None
    assert len(result.trials) == 1
    assert result.message.startswith("unreachable: even the best allocation")


def test_reports_a_range_above_the_smallest_allocation():
    result = bisect_quality(_problem(), Quality(), lo=0.5, hi=0.9, max_evals=40)
    assert not result.reached
    assert "already drops only" in result.message
    assert result.best is not None and result.best.drop < 0.5


def test_reports_a_range_that_falls_between_two_allocations():
    layers = [
        Layer("only", 1000, {(b, 16): Option(2.0 ** (-2 * b), {"size_bytes": 1000 * b / 8}) for b in (2, 8)})
    ]
    problem = Problem(layers)
    result = bisect_quality(
        problem, lambda a: {2: 0.3, 8: 0.01}[a.choices["only"][0]], lo=0.05, hi=0.1, max_evals=20
    )
    assert not result.reached
    assert "no allocation between" in result.message
    assert {t.drop for t in result.trials} == {0.3, 0.01}


def test_stops_after_max_evals():
    quality = Quality()
    result = bisect_quality(_problem(), quality, lo=2.0**-4.5001, hi=2.0**-4.5, max_evals=3)
    assert quality.calls <= 3
    assert not result.reached or result.best is not None


def test_bad_range():
    with pytest.raises(ValueError, match="lo <= hi"):
        bisect_quality(_problem(), Quality(), lo=0.2, hi=0.1)
