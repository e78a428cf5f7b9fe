"""Measuring allocations: quality of a fake-quantized model, the uniform widths it
is compared against, and the per-layer result rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kernels.scheme import ACTIVATION_BITS, WEIGHT_BITS, Choice, QuantScheme, choice_key
from sensitivity.bundle import ModelBundle
from sensitivity.layers import LayerInfo
from sensitivity.quantized import QuantizedWeights
from sensitivity.table import SensitivityTable
from workers.accounting import Totals, choice_costs, fixed_bytes, stored_bytes, totals
from workers.spec import JobSpec, LayerResult, Summary, UniformPoint


def measure(bundle: ModelBundle, choices: Mapping[str, Choice], scheme: QuantScheme,
            weights: QuantizedWeights | None = None) -> dict[str, float]:
    """Quality of the model with each named layer at its chosen width, quantized by the
    job's quantizer (`weights`, the job's provider; a fresh one for `scheme` if not given)."""
    if bundle.streamed is not None:  # round to nearest, one block resident
        return bundle.streamed.quality({n: scheme.for_choice(c) for n, c in choices.items()})
    weights = weights if weights is not None else QuantizedWeights(bundle, scheme)
    return bundle.evaluate(weights.apply(choices).model)


def quality_drop(bundle: ModelBundle, reference: dict[str, float], quality: dict[str, float]) -> float:
    """Change for the worse of the headline metric, whichever its direction."""
    return bundle.headline.drop(reference[bundle.headline.name], quality[bundle.headline.name])


def layer_rows(layers: Sequence[LayerInfo], chosen: Mapping[str, Choice],
               table: SensitivityTable, scheme: QuantScheme) -> list[LayerResult]:
    rows = []
    for layer in layers:
        c = chosen[layer.name]
        costs = choice_costs(layer, c, scheme)
        rows.append(LayerResult(
            name=layer.name, kind=layer.kind, shape=list(layer.shape), params=layer.params,
            macs=layer.macs, group=layer.group, w_bits=c[0], a_bits=c[1],
            bits_per_weight=costs["avg_bits"] / layer.params, bytes=costs["size_bytes"],
            omega=table.omega[layer.name].get(c, 0.0),
            omega_by_bits={choice_key(k): v for k, v in table.omega[layer.name].items()},
            stats=table.layer_stats.get(layer.name, {}),
        ))
    return rows


def summarize(bundle: ModelBundle, layers: Sequence[LayerInfo], chosen: Mapping[str, Choice],
              scheme: QuantScheme) -> Summary:
    t = totals(layers, chosen, scheme, fixed_bytes(bundle.model, layers))
    return Summary(size_bytes=t.size_bytes, full_precision_bytes=stored_bytes(bundle.model),
                   quantized_layer_bytes=t.layer_bytes, avg_bits=t.avg_bits,
                   avg_bits_no_overhead=t.avg_bits_no_overhead, bops=t.bops)


def uniform_totals(spec: JobSpec, bundle: ModelBundle, layers: Sequence[LayerInfo],
                   scheme: QuantScheme, bits: int) -> Totals:
    return totals(layers, {layer.name: (bits, ACTIVATION_BITS) for layer in layers}, scheme,
                  fixed_bytes(bundle.model, layers), spec.latency_table, spec.fixed_latency_ms)


def uniform_points(spec: JobSpec, bundle: ModelBundle, layers: Sequence[LayerInfo], scheme: QuantScheme,
                   kind: str, allocation_bytes: float, *, every_width: bool,
                   weights: QuantizedWeights | None = None) -> list[UniformPoint]:
    """The uniform widths an allocation must beat, measured: every width (the
    baseline curve), or only the nearest size not below the allocation's."""
    points = []
    for bits in WEIGHT_BITS:
        t = uniform_totals(spec, bundle, layers, scheme, bits)
        nearest = t.size_bytes >= allocation_bytes - 1e-9 or bits == WEIGHT_BITS[-1]
        if not (every_width or nearest):
            continue
        quality = measure(bundle, {layer.name: (bits, ACTIVATION_BITS) for layer in layers}, scheme, weights)
        points.append(UniformPoint(w_bits=bits, cost=t.cost(kind), avg_bits=t.avg_bits,
                                   size_bytes=t.size_bytes, quality=quality))
        if nearest and not every_width:
            break
    return points


UNIFORM_ACTIVATION_W_BITS = (8, 4)  # the W8Ax / W4Ax comparison points


def uniform_activation_points(spec: JobSpec, bundle: ModelBundle, layers: Sequence[LayerInfo],
                              scheme: QuantScheme, kind: str, a_widths: Mapping[str, Sequence[int]],
                              weights: QuantizedWeights | None = None) -> list[UniformPoint]:
    """Uniform W8/W4 with every layer's input at each activation width below 16 the job
    allows (a layer whose input cannot take it, an embedding, stays at 16), measured."""
    allowed = sorted({a for widths in a_widths.values() for a in widths if a < ACTIVATION_BITS})
    points = []
    for w in UNIFORM_ACTIVATION_W_BITS:
        for a in allowed:
            choices = {layer.name: (w, a if a in a_widths[layer.name] else ACTIVATION_BITS)
                       for layer in layers}
            fixed = fixed_bytes(bundle.model, layers)
            try:
                t = totals(layers, choices, scheme, fixed, spec.latency_table, spec.fixed_latency_ms)
            except ValueError:  # the latency table does not cover these choices
                if kind == "latency_ms":
                    continue
                t = totals(layers, choices, scheme, fixed)
            points.append(UniformPoint(w_bits=w, a_bits=a, cost=t.cost(kind), avg_bits=t.avg_bits,
                                       size_bytes=t.size_bytes,
                                       quality=measure(bundle, choices, scheme, weights)))
    return points


def nearest_uniform_not_below(points: Sequence[UniformPoint], size_bytes: float) -> UniformPoint:
    """The uniform width whose size is the nearest not below the allocation's."""
    for point in points:
        if point.size_bytes >= size_bytes - 1e-9:
            return point
    return points[-1]
