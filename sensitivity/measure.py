"""Measured calibration loss with some layers' weights replaced by their
quantize-dequantize result under the job's quantizer (`sensitivity.quantized`):
what `empirical` and measured pair terms evaluate."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from sensitivity.bundle import ModelBundle
from sensitivity.quantized import QuantizedWeights
from sensitivity.table import Choice


@contextlib.contextmanager
def replaced_weights(model: nn.Module, weights: Mapping[str, torch.Tensor],
                     biases: Mapping[str, torch.Tensor | None] | None = None):
    """Module `name`'s weight holds `weights[name]` inside (and its bias `biases[name]`
    where given); restored after."""
    modules = dict(model.named_modules())
    saved = []
    try:
        with torch.no_grad():
            for name, w in weights.items():
                saved.append((modules[name].weight, modules[name].weight.detach().clone()))
                modules[name].weight.copy_(w)
            for name, b in (biases or {}).items():
                if b is not None and b is not modules[name].bias:
                    saved.append((modules[name].bias, modules[name].bias.detach().clone()))
                    modules[name].bias.copy_(b)
        yield model
    finally:
        with torch.no_grad():
            for param, value in reversed(saved):
                param.copy_(value)


@torch.no_grad()
def calibration_loss(bundle: ModelBundle) -> float:
    """The loss over all calibration batches, batch-size weighted, in float64."""
    total = sum(bundle.batch_size(b) for b in bundle.calibration)
    return sum(float(bundle.loss(bundle.model, b)) * bundle.batch_size(b) / total
               for b in bundle.calibration)


def loss_with(bundle: ModelBundle, qw: QuantizedWeights, assignment: Sequence[tuple[str, Choice]]) -> float:
    """Calibration loss with the listed layers at their choice (16 bits: fp16 storage)."""
    with replaced_weights(bundle.model, {n: qw(n, c) for n, c in assignment},
                          {n: qw.bias(n, c) for n, c in assignment}):
        return calibration_loss(bundle)
