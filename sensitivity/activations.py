"""The one provider of activation quantizers in a job: each layer's input quantizer at each
a_bits under the job's `ActivationScheme`, calibrated once on the calibration batches of the
full-precision model (static ranges) and kept.

What reads it: the activation term of the sensitivity (E‖Δa_l(a)‖²; the quantizers of the
measured loss with only layer l's input quantized), the fake-quantized evaluation of an allocation (forward
pre-hooks on the layers at a_bits < 16) and the artifact (the scales and modes it stores).

E‖Δa_l(a)‖² is per calibration sample: Σ_b share_b · ‖Q_a(a_{l,b}) − a_{l,b}‖² / B_b, with
a_{l,b} layer l's input on calibration batch b (B_b samples, share_b its share of the
samples); `numel` is the input's size per sample, n_a,l = Σ_b share_b · numel(a_{l,b}) / B_b.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import torch
from torch import nn

from kernels.activation import (
    ActivationQuantizer,
    ActivationStats,
    attach,
    calibrate,
    make_quantizer,
    squared_error,
    supports_activation_quant,
)
from kernels.scheme import ACTIVATION_BITS, ActivationScheme
from sensitivity.bundle import ModelBundle
from sensitivity.layer_inputs import calibration_runs


class QuantizedActivations:
    """Input quantizers of the layers of `bundle.model` under `scheme`."""

    def __init__(self, bundle: ModelBundle, scheme: ActivationScheme):
        self.bundle, self.scheme = bundle, scheme
        self.modules = dict(bundle.model.named_modules())
        self._stats: dict[str, ActivationStats] = {}
        self._quantizers: dict[tuple[str, int], ActivationQuantizer] = {}
        self._errors: dict[tuple[str, int], float] = {}
        self._numel: dict[str, float] = {}

    def supports(self, name: str) -> bool:
        """False for layers whose input is not quantized (embeddings look up token ids)."""
        return supports_activation_quant(self.modules[name])

    def _calibrate(self, names: Sequence[str]) -> None:
        todo = [n for n in names if n not in self._stats]
        if todo and self.scheme.mode == "static":
            self._stats.update(calibrate(self.bundle.model, todo, calibration_runs(self.bundle)))

    def quantizer(self, name: str, bits: int) -> ActivationQuantizer:
        key = (name, bits)
        if key not in self._quantizers:
            self._calibrate([name])
            self._quantizers[key] = make_quantizer(bits, self.scheme, self.modules[name],
                                                   self._stats.get(name))
        return self._quantizers[key]

    def quantizers(self, choices: Mapping[str, int]) -> dict[str, ActivationQuantizer]:
        """{layer: quantizer} for the layers whose a_bits (`choices[layer]`) are below 16."""
        names = [n for n, a in choices.items() if a < ACTIVATION_BITS]
        self._calibrate(names)
        return {n: self.quantizer(n, choices[n]) for n in names}

    @torch.no_grad()
    def errors(self, names: Sequence[str], bits: Sequence[int]) -> dict[str, dict[int, float]]:
        """E‖Δa_l(a)‖² per calibration sample for every named layer and width (16: 0), in
        one pass over the calibration batches."""
        widths = sorted({b for b in bits if b < ACTIVATION_BITS})
        todo = [n for n in names if any((n, b) not in self._errors for b in widths)]
        if todo:
            self._measure(todo, widths)
        return {n: {b: (self._errors[(n, b)] if b < ACTIVATION_BITS else 0.0) for b in bits}
                for n in names}

    def numel(self, name: str) -> float:
        """n_a,l: the layer's input elements per calibration sample."""
        if name not in self._numel:
            self._measure([name], [])
        return self._numel[name]

    def _measure(self, names: Sequence[str], widths: Sequence[int]) -> None:
        quantizers = {(n, b): self.quantizer(n, b) for n in names for b in widths}
        calib = self.bundle.calibration
        total = sum(self.bundle.batch_size(b) for b in calib)
        errors = dict.fromkeys(quantizers, 0.0)
        numel = dict.fromkeys(names, 0.0)
        seen: dict[str, int] = {}
        weight = [0.0]

        def hook(name, module, args, kwargs):
            if seen.get(name) == len(done):
                raise ValueError(f"layer {name} runs more than once per forward: activation "
                                 "quantization supports layers called once")
            seen[name] = len(done)
            x = (args[0] if args else next(iter(kwargs.values()))).detach()
            numel[name] += weight[0] * x.numel()
            for b in widths:
                errors[(name, b)] += weight[0] * squared_error(quantizers[(name, b)], x)

        done: list[int] = []
        handles = [self.modules[n].register_forward_pre_hook(partial(hook, n), with_kwargs=True)
                   for n in names]
        try:
            for batch in calib:
                size = self.bundle.batch_size(batch)
                weight[0] = (size / total) / size  # share_b / B_b
                self.bundle.forward(self.bundle.model, batch)
                done.append(1)
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in names if n not in seen]
        if missing:
            raise ValueError(f"layers not run by the model's forward: {', '.join(missing)}")
        self._errors.update(errors)
        self._numel.update(numel)

    def attach(self, model: nn.Module, choices: Mapping[str, int]) -> list:
        """Register the input quantizers of `choices` ({layer: a_bits}) on `model` (a copy of
        the bundle's model, e.g. weight-quantized); returns the hook handles."""
        return attach(model, self.quantizers(choices))

    def records(self, choices: Mapping[str, int]) -> dict[str, dict]:
        """What the artifact stores per layer at a_bits < 16: bits, mode, symmetry, the
        feature dimension, and for static ranges the scale and zero point."""
        return {n: q.record() for n, q in self.quantizers(choices).items()}

    def meta(self) -> dict:
        return {"settings": self.scheme.as_dict(),
                "ranges": {n: [s.lo, s.hi] for n, s in self._stats.items()}}
