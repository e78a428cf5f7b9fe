"""Measuring allocations: quality of a fake-quantized model, the uniform widths it
is compared against, and the per-layer result rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kernels.fake_quant import fake_quantize_model
from kernels.quantizer import QuantConfig
from sensitivity.bundle import ModelBundle
from sensitivity.layers import LayerInfo
from sensitivity.table import Choice, SensitivityTable, choice_key
from workers.costs import choice_costs, fixed_bytes, quant_config, stored_bytes
from workers.problem import A_BITS
from workers.spec import JobSpec, LayerResult, Summary, UniformPoint

UNIFORM_WIDTHS = (2, 3, 4, 5, 6, 8, 16)


def measure(bundle: ModelBundle, choices: Mapping[str, Choice], base: QuantConfig) -> dict[str, float]:
    """Quality of the model with each named layer at its chosen width."""
    configs = {name: quant_config(c, base) for name, c in choices.items()}
    return bundle.evaluate(fake_quantize_model(bundle.model, configs))


def quality_drop(bundle: ModelBundle, reference: dict[str, float], quality: dict[str, float]) -> float:
    """Drop of the headline metric (all built-in metrics are higher-is-better)."""
    return reference[bundle.quality_metric] - quality[bundle.quality_metric]


def layer_rows(spec: JobSpec, layers: Sequence[LayerInfo], chosen: Mapping[str, Choice],
               table: SensitivityTable, base: QuantConfig) -> list[LayerResult]:
    rows = []
    for layer in layers:
        c = chosen[layer.name]
        costs = choice_costs(layer, c, base)
        rows.append(LayerResult(
            name=layer.name, kind=layer.kind, shape=list(layer.shape), params=layer.params,
            macs=layer.macs, group=layer.group, w_bits=c[0], a_bits=c[1],
            bits_per_weight=costs["avg_bits"] / layer.params, bytes=costs["size_bytes"],
            omega=table.omega[layer.name].get(c, 0.0),
            omega_by_bits={choice_key(k): v for k, v in table.omega[layer.name].items()},
            stats=table.layer_stats.get(layer.name, {}),
        ))
    return rows


def summarize(bundle: ModelBundle, layers: Sequence[LayerInfo], rows: Sequence[LayerResult]) -> Summary:
    total_params = sum(layer.params for layer in layers)
    layer_bytes = sum(r.bytes for r in rows)
    return Summary(
        size_bytes=layer_bytes + fixed_bytes(bundle.model, layers),
        full_precision_bytes=stored_bytes(bundle.model),
        quantized_layer_bytes=layer_bytes,
        avg_bits=8 * layer_bytes / total_params,
        avg_bits_no_overhead=sum(r.w_bits * r.params for r in rows) / total_params,
        bops=sum(r.macs * r.w_bits * r.a_bits for r in rows),
    )


def uniform_points(spec: JobSpec, bundle: ModelBundle, layers: Sequence[LayerInfo], base: QuantConfig,
                   kind: str, allocation_bytes: float, *, every_width: bool) -> list[UniformPoint]:
    """The uniform widths an allocation must beat, measured: every width (the
    baseline curve), or only the nearest size not below the allocation's."""
    fixed = fixed_bytes(bundle.model, layers)
    total_params = sum(layer.params for layer in layers)
    points = []
    for bits in UNIFORM_WIDTHS:
        costs = [choice_costs(layer, (bits, A_BITS), base, spec.latency_table) for layer in layers]
        size = sum(c["size_bytes"] for c in costs)
        nearest = size + fixed >= allocation_bytes - 1e-9 or bits == UNIFORM_WIDTHS[-1]
        if not (every_width or nearest):
            continue
        cost = {"avg_bits": 8 * size / total_params, "size_bytes": size + fixed,
                "bops": sum(c["bops"] for c in costs),
                "latency_ms": sum(c.get("latency_ms", 0.0) for c in costs) + spec.fixed_latency_ms}[kind]
        quality = measure(bundle, {layer.name: (bits, A_BITS) for layer in layers}, base)
        points.append(UniformPoint(w_bits=bits, cost=cost, avg_bits=8 * size / total_params,
                                   size_bytes=size + fixed, quality=quality))
        if nearest and not every_width:
            break
    return points


def nearest_uniform_not_below(points: Sequence[UniformPoint], size_bytes: float) -> UniformPoint:
    """The uniform width whose size is the nearest not below the allocation's."""
    for point in points:
        if point.size_bytes >= size_bytes - 1e-9:
            return point
    return points[-1]
