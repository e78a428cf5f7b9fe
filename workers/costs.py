"""The cost model (DESIGN §3, §5): what each choice of each layer costs in every
budget's units, and what the rest of the model costs regardless."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from kernels.quantizer import QuantConfig, weight_bits
from sensitivity.layers import LayerInfo
from sensitivity.table import Choice, choice_key


def quant_config(choice: Choice, base: QuantConfig) -> QuantConfig:
    return QuantConfig(choice[0], base.group_size, base.symmetric, base.mse_clip)


def choice_costs(layer: LayerInfo, choice: Choice, base: QuantConfig,
                 latency: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, float]:
    """Cost of one choice in every budget's units; latency only with a latency table
    ({layer: {"w4a16": ms}}), which must then cover the choice."""
    bits = weight_bits(layer.shape, quant_config(choice, base))
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
