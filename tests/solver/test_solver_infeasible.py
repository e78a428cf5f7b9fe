"""Infeasible requests: status, smallest reachable cost, and the overrides that block them."""

from __future__ import annotations

import pytest
from solver_brute import smallest

from solver.ilp import solve
from solver.problem import Budget, Layer, Option, PairTerm, Problem


def _layer(name: str, params: int, group: str | None = None, bits=(4, 8)) -> Layer:
    return Layer(
        name,
        params,
        {
            (b, 16): Option(params * 2.0 ** (-2 * b), {"size_bytes": params * b / 8, "avg_bits": params * b})
            for b in bits
        },
        group=group,
    )


def _model(group=None) -> list[Layer]:
    return [
        _layer("conv1", 1000, group),
        _layer("conv2", 4000, group),
        _layer("conv3", 4000),
        _layer("fc", 1000),
    ]


def test_pins_that_break_the_size_budget_are_named():
    layers = _model()
    # all at 4 bits = 5000 bytes, conv1/fc at 8 bits add 1000 bytes
    problem = Problem(
        layers,
        [Budget("size_bytes", 5600.0)],
        fixed_costs={"size_bytes": 300.0},
        pins={"conv1": (8, 16), "fc": (8, 16)},
    )
    allocation = solve(problem)

    assert allocation.status == "infeasible"
    assert allocation.objective is None and not allocation.choices
    why = allocation.explanation
    (reach,) = why.budgets
    assert reach.kind == "size_bytes"
    assert reach.smallest == pytest.approx(smallest(problem, "size_bytes")) == pytest.approx(6300.0)
    (blocker,) = why.blockers
    assert blocker.what == "pins" and blocker.kind == "size_bytes"
    assert set(blocker.layers) == {"conv1", "fc"}
    assert blocker.smallest_without == pytest.approx(5300.0)
    assert blocker.share == pytest.approx(2000.0 / 5600.0)
    text = str(why)
    assert "\n" not in text
    assert "pins on" in text and "conv1 (8,16)" in text and "fc (8,16)" in text
    assert "36% of the size_bytes budget" in text


def test_only_the_pins_needed_are_blamed():
    layers = _model()
    problem = Problem(layers, [Budget("size_bytes", 5600.0)], pins={"conv2": (8, 16), "conv1": (8, 16)})
    why = solve(problem).explanation
    (blocker,) = why.blockers
    assert blocker.layers == ("conv2",)  # dropping conv2's pin alone makes 5500 <= 5600


def test_tied_layers_with_no_common_choice_are_a_conflict():
    layers = [_layer("a", 100, "g", bits=(2, 4)), _layer("b", 100, "g", bits=(8, 16))]
    allocation = solve(Problem(layers, [Budget("avg_bits", 16.0)]))
    assert allocation.status == "infeasible"
    assert "no choice common" in str(allocation.explanation)
    assert any(b.what == "ties" for b in allocation.explanation.blockers)


def test_disagreeing_pins_in_a_group_are_a_conflict():
    problem = Problem(
        _model(group="down"), [Budget("avg_bits", 8.0)], pins={"conv1": (4, 16), "conv2": (8, 16)}
    )
    allocation = solve(problem)
    assert allocation.status == "infeasible"
    assert "pins on conv1 (4,16), conv2 (8,16) disagree" in str(allocation.explanation)


def test_budgets_reachable_alone_but_not_together():
    # size favours low bits on the big layers; a latency table makes those slow
    layers = [
        Layer(
            "big",
            8000,
            {
                (4, 16): Option(1.0, {"size_bytes": 4000, "latency_ms": 9.0}),
                (8, 16): Option(0.0, {"size_bytes": 8000, "latency_ms": 1.0}),
            },
        ),
        Layer(
            "small",
            1000,
            {
                (4, 16): Option(1.0, {"size_bytes": 500, "latency_ms": 9.0}),
                (8, 16): Option(0.0, {"size_bytes": 1000, "latency_ms": 1.0}),
            },
        ),
    ]
    problem = Problem(layers, [Budget("size_bytes", 5000), Budget("latency_ms", 9.5)])
    allocation = solve(problem)
    assert allocation.status == "infeasible"
    by_kind = {b.kind: b for b in allocation.explanation.budgets}
    assert by_kind["size_bytes"].smallest == 4500 and by_kind["latency_ms"].smallest == 2.0
    assert by_kind["size_bytes"].smallest_jointly == 9000  # latency <= 9.5 forces both to 8 bits
    assert by_kind["latency_ms"].smallest_jointly == 10.0  # size <= 5000 keeps big at 4 bits
    assert "not all at once" in str(allocation.explanation)


def test_a_restrictive_allowed_set_is_named():
    layers = _model()
    problem = Problem(layers, [Budget("avg_bits", 4.5)], allowed={"conv3": frozenset({(8, 16)})})
    why = solve(problem).explanation
    assert why.budgets[0].smallest == pytest.approx(smallest(problem, "avg_bits")) == pytest.approx(5.6)
    (blocker,) = why.blockers
    assert blocker.what == "allowed" and blocker.layers == ("conv3",)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Option(float("nan")), "finite"),
        (lambda: Option(1.0, {"size": 1.0}), "unknown budget kind"),
        (lambda: Option(1.0, {"size_bytes": -1.0}), ">= 0"),
        (lambda: Layer("a", 0, {(4, 16): Option(1.0)}), "params"),
        (lambda: Layer("a", 10, {(0, 16): Option(1.0)}), "w_bits=0"),
        (lambda: Layer("a", 10, {}), "at least one option"),
        (lambda: Budget("flops", 1.0), "unknown budget kind"),
        (lambda: PairTerm("a", "a", {}), "different layers"),
        (lambda: Problem([_layer("a", 10), _layer("a", 10)]), "duplicate"),
        (lambda: Problem([_layer("a", 10)], [Budget("bops", 1.0), Budget("bops", 2.0)]), "more than one"),
        (lambda: Problem([_layer("a", 10)], pins={"b": (4, 16)}), "unknown layer"),
        (lambda: Problem([_layer("a", 10)], pins={"a": (2, 16)}), "not one of its options"),
        (lambda: Problem([_layer("a", 10)], allowed={"a": frozenset()}), "empty"),
        (lambda: Problem([_layer("a", 10)], fixed_costs={"avg_bits": 1.0}), "no fixed cost"),
        (
            lambda: Problem(
                [_layer("a", 10), _layer("b", 10)], pairs=[PairTerm("a", "b", {((2, 16), (4, 16)): 1.0})]
            ),
            "combination",
        ),
    ],
)
def test_bad_input_raises_value_error(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_a_budget_without_costs_is_a_clear_error():
    problem = Problem(_model(), [Budget("latency_ms", 1.0)])
    with pytest.raises(ValueError, match="latency_ms cost on every option: layer conv1"):
        solve(problem)


def test_bad_solver_options_raise():
    problem = Problem(_model(), [Budget("avg_bits", 6.0)])
    with pytest.raises(ValueError, match="backend"):
        solve(problem, backend="gurobi")
    with pytest.raises(ValueError, match="time_limit_s"):
        solve(problem, time_limit_s=0)
    with pytest.raises(ValueError, match="mip_gap"):
        solve(problem, mip_gap=-1)
