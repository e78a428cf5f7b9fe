"""The one cost model (DESIGN §3, §5): what each choice of each layer costs in
every budget's units, what the rest of the model costs regardless, and the totals
of a whole allocation (size, average bits with and without the scale overhead,
BOPs, latency). The problem builder, the per-layer rows, the summary, the uniform
points and the frontier all read their figures from here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from kernels.scheme import Choice, QuantScheme, choice_key, weight_bits
from sensitivity.layers import LayerInfo

Latency = Mapping[str, Mapping[str, float]]  # {layer: {"w4a16": ms}}


def choice_costs(layer: LayerInfo, choice: Choice, scheme: QuantScheme,
                 latency: Latency | None = None) -> dict[str, float]:
    """Cost of one choice in every budget's units; latency only with a latency table,
    which must then cover the choice."""
    bits = weight_bits(layer.shape, scheme.for_choice(choice))
    costs = {
        "avg_bits": float(bits),  # the solver divides by the total quantizable params
        "size_bytes": bits / 8,
        "bops": float(layer.macs * choice[0] * choice[1]),
    }
    if latency is not None:
        key = choice_key(choice)
        if key not in latency.get(layer.name, {}):
            raise ValueError(f"latency_table has no entry for layer {layer.name!r} at {key}")
        costs["latency_ms"] = float(latency[layer.name][key])
    return costs


def stored_bytes(model: nn.Module) -> float:
    """Bytes of every parameter and buffer at its stored dtype."""
    tensors = list(model.parameters()) + list(model.buffers())
    return float(sum(t.numel() * t.element_size() for t in tensors))


def fixed_bytes(model: nn.Module, quantized: Sequence[LayerInfo]) -> float:
    """Bytes of everything outside the quantizable layers, at its stored dtype."""
    modules = dict(model.named_modules())
    weights = sum(modules[layer.name].weight.numel() * modules[layer.name].weight.element_size()
                  for layer in quantized)
    return stored_bytes(model) - weights


@dataclass(frozen=True)
class Totals:
    """An allocation's figures over the quantizable layers (plus the fixed bytes)."""

    layer_bytes: float
    size_bytes: float  # whole model: quantized layers + everything else at stored dtype
    avg_bits: float  # scale and zero overhead included
    avg_bits_no_overhead: float
    bops: float
    latency_ms: float  # 0 without a latency table

    def cost(self, kind: str) -> float:
        """The figure in a budget's units (`avg_bits`, `size_bytes`, `bops`, `latency_ms`)."""
        return getattr(self, kind)


def totals(layers: Sequence[LayerInfo], choices: Mapping[str, Choice], scheme: QuantScheme,
           fixed: float, latency: Latency | None = None, fixed_latency_ms: float = 0.0) -> Totals:
    """Totals of the allocation `choices` (layer name -> choice) over `layers`; `fixed`
    is `fixed_bytes` of the model."""
    costs = [choice_costs(layer, choices[layer.name], scheme, latency) for layer in layers]
    params = sum(layer.params for layer in layers)
    layer_bytes = sum(c["size_bytes"] for c in costs)
    return Totals(
        layer_bytes=layer_bytes,
        size_bytes=layer_bytes + fixed,
        avg_bits=8 * layer_bytes / params,
        avg_bits_no_overhead=sum(choices[layer.name][0] * layer.params for layer in layers) / params,
        bops=sum(c["bops"] for c in costs),
        latency_ms=sum(c.get("latency_ms", 0.0) for c in costs) + (fixed_latency_ms if latency else 0.0),
    )
