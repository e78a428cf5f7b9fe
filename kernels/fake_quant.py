"""Fake quantization of a whole model: each chosen layer's weight replaced by
Q_b(W), everything else untouched. What the evaluation of an allocation runs."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from kernels.quantizer import fake_quantize
from kernels.scheme import QuantConfig


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
        weight = qmodules[name].weight
        weight.copy_(fake_quantize(weight, config))
    return quantized
