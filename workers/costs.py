"""The cost model (DESIGN §3, §5): what each choice of each layer costs in every
budget's units, and what the rest of the model costs regardless."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from kernels.quantizer import QuantConfig, weight_bits
from sensitivity.layers import LayerInfo
from sensitivity.table import Choice


def quant_config(choice: Choice, base: QuantConfig) -> QuantConfig:
    return QuantConfig(choice[0], base.group_size, base.symmetric, base.mse_clip)


def choice_costs(layer: LayerInfo, choice: Choice, base: QuantConfig) -> dict[str, float]:
    bits = weight_bits(layer.shape, quant_config(choice, base))
    return {
        "avg_bits": float(bits),  # the solver divides by the total quantizable params
        "size_bytes": bits / 8,
        "bops": float(layer.macs * choice[0] * choice[1]),
    }


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
