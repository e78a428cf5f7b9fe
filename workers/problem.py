"""From a job spec, the discovered layers and a sensitivity table to the solver's
integer program (DESIGN §5): options, costs, budgets and per-layer overrides."""

from __future__ import annotations

from collections.abc import Sequence

from kernels.scheme import ACTIVATION_BITS as A_BITS
from kernels.scheme import FULL_PRECISION_BITS, Choice, QuantScheme
from sensitivity.bundle import ModelBundle
from sensitivity.layers import LayerInfo
from solver import Budget, Layer, Option, PairTerm, Problem
from workers.accounting import choice_costs, fixed_bytes
from workers.spec import JobSpec


class JobError(Exception):
    """A job that cannot produce a result, with a message for the user."""


def candidate_choices(spec: JobSpec) -> list[Choice]:
    widths = set(spec.weight_bits) | set(spec.overrides.pins.values())
    for bits in spec.overrides.allowed.values():
        widths |= set(bits)
    return [(b, A_BITS) for b in sorted(widths | {FULL_PRECISION_BITS})]


def build_problem(spec: JobSpec, bundle: ModelBundle, layers: Sequence[LayerInfo],
                  omega: dict[str, dict[Choice, float]] | None, scheme: QuantScheme,
                  pairs: dict | None = None) -> Problem:
    """The integer program of the job; `omega=None` gives the feasibility problem."""
    ov = spec.overrides
    solver_layers, allowed = [], {}
    for layer in layers:
        if layer.name in ov.exclude:
            widths = {FULL_PRECISION_BITS}
        else:
            widths = set(ov.allowed.get(layer.name, spec.weight_bits))
        if layer.name in ov.pins:
            widths.add(ov.pins[layer.name])
        options = {
            (b, A_BITS): Option(omega=omega[layer.name].get((b, A_BITS), 0.0) if omega else 0.0,
                                costs=choice_costs(layer, (b, A_BITS), scheme, spec.latency_table))
            for b in sorted(widths)
        }
        solver_layers.append(Layer(layer.name, layer.params, options, layer.group))
        if layer.name in ov.allowed:
            allowed[layer.name] = frozenset((b, A_BITS) for b in ov.allowed[layer.name])
    fixed = {"size_bytes": fixed_bytes(bundle.model, layers)}
    if spec.latency_table:
        fixed["latency_ms"] = spec.fixed_latency_ms
    return Problem(
        layers=solver_layers,
        budgets=[Budget(kind, limit) for kind, limit in spec.solver_budgets().items()],
        fixed_costs=fixed,
        pins={name: (bits, A_BITS) for name, bits in ov.pins.items()},
        allowed=allowed,
        pairs=[PairTerm(a, b, values) for (a, b), values in (pairs or {}).items()] if omega else (),
    )


def check_overrides(spec: JobSpec, layers: Sequence[LayerInfo]) -> None:
    known = {layer.name for layer in layers if layer.used}
    ov = spec.overrides
    named = set(ov.pins) | set(ov.allowed) | set(ov.exclude) | set(spec.latency_table or {})
    unknown = sorted(named - known)
    if unknown:
        raise JobError(f"unknown layers in overrides: {', '.join(unknown)}; "
                       f"quantizable layers: {', '.join(sorted(known))}")
    clash = sorted(set(ov.pins) & set(ov.exclude))
    if clash:
        raise JobError(f"layers both pinned and excluded: {', '.join(clash)}")
