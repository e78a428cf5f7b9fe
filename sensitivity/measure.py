"""Measured calibration loss with some layers' weights replaced by their
quantize-dequantize result: what `empirical` and measured pair terms evaluate."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from kernels.quantizer import QuantConfig, fake_quantize
from sensitivity.bundle import ModelBundle
from sensitivity.table import Choice


@contextlib.contextmanager
def replaced_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]):
    """Module `name`'s weight holds `weights[name]` inside; restored after."""
    modules = dict(model.named_modules())
    saved = {}
    try:
        with torch.no_grad():
            for name, w in weights.items():
                saved[name] = modules[name].weight.detach().clone()
                modules[name].weight.copy_(w)
        yield model
    finally:
        with torch.no_grad():
            for name, w in saved.items():
                modules[name].weight.copy_(w)


@torch.no_grad()
def calibration_loss(bundle: ModelBundle) -> float:
    """The loss over all calibration batches, batch-size weighted, in float64."""
    total = sum(bundle.batch_size(b) for b in bundle.calibration)
    return sum(float(bundle.loss(bundle.model, b)) * bundle.batch_size(b) / total
               for b in bundle.calibration)


class QuantizedWeights:
    """Q_b(W_l) for each layer and choice, computed once and kept."""

    def __init__(self, model: nn.Module, quant: QuantConfig):
        self.modules = dict(model.named_modules())
        self.quant = quant
        self._cache: dict[tuple[str, Choice], torch.Tensor] = {}

    def __call__(self, name: str, choice: Choice) -> torch.Tensor:
        key = (name, choice)
        if key not in self._cache:
            w = self.modules[name].weight
            cfg = QuantConfig(choice[0], self.quant.group_size, self.quant.symmetric, self.quant.mse_clip)
            self._cache[key] = fake_quantize(w, cfg)
        return self._cache[key]

    def delta(self, name: str, choice: Choice) -> torch.Tensor:
        """ΔW_l(b) = Q_b(W_l) − W_l."""
        return self(name, choice) - self.modules[name].weight.detach()


def loss_with(bundle: ModelBundle, qw: QuantizedWeights, assignment: Sequence[tuple[str, Choice]]) -> float:
    """Calibration loss with the listed layers at their choice (16 bits: fp16 storage)."""
    with replaced_weights(bundle.model, {n: qw(n, c) for n, c in assignment}):
        return calibration_loss(bundle)
