"""Fake quantization of a whole model: each chosen layer's weight replaced by
Q_b(W), everything else untouched. What the evaluation of an allocation runs.

Weights are quantized in their quantizer view (`kernels.layout`): a Conv1D's
(in, out) weight along its inputs, as if it were the (out, in) linear weight. A
weight shared by several modules (tied embeddings) is one Parameter, so
quantizing it through one module changes it for all of them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from kernels.layout import from_quantizer_view, quantizer_view
from kernels.quantizer import fake_quantize, quantization_error
from kernels.scheme import QuantConfig


def fake_quantize_weight(module: nn.Module, config: QuantConfig,
                         weight: torch.Tensor | None = None) -> torch.Tensor:
    """Q_b of `module`'s weight (or of `weight`, in the module's storage layout),
    returned in the storage layout."""
    view = quantizer_view(module, weight)
    return from_quantizer_view(module, fake_quantize(view, config))


def weight_quantization_error(module: nn.Module, config: QuantConfig) -> float:
    """‖Q_b(W) − W‖² of `module`'s weight, quantized in its quantizer view."""
    return quantization_error(quantizer_view(module), config)


@torch.no_grad()
def fake_quantize_model(model: nn.Module, configs: Mapping[str, QuantConfig]) -> nn.Module:
    """A copy of `model` whose module `name`'s weight is Q(W) for each entry of
    `configs` (16-bit entries: the weight rounded to its 16-bit storage dtype)."""
    modules = dict(model.named_modules())
    unknown = sorted(set(configs) - set(modules))
    if unknown:
        raise ValueError(f"no such layers in the model: {', '.join(unknown)}")
    quantized = copy.deepcopy(model)
    qmodules = dict(quantized.named_modules())
    for name, config in configs.items():
        module = qmodules[name]
        module.weight.copy_(fake_quantize_weight(module, config))
    return quantized
