"""Activation quantization (DESIGN §3): the input of a quantizable layer fake-quantized at
a_bits, uniformly, by a forward pre-hook on the layer.

* static: one scale and zero point per tensor, from the calibration inputs' range
  (`ActivationStats`, gathered by `calibrate`): min/max, a percentile at both ends, or the
  clip of the min/max range that minimises ‖a − Q(a)‖² (searched at each width).
* dynamic: per-token ranges computed at run time: each token's (row's) min/max over its
  features (the last dimension of a linear input, the channels of a convolution input).

Asymmetric: codes q ∈ [0, 2^b − 1], a ≈ s·(q − z), the range widened to hold 0 so that 0
is exact. Symmetric: z = 0, q ∈ [−(2^(b−1) − 1), 2^(b−1) − 1], s = max|a| / (2^(b−1) − 1).
The settings are `kernels.scheme.ActivationScheme`; this module holds the numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kernels.layout import is_linear_like
from kernels.scheme import FULL_PRECISION_BITS, ActivationScheme, check_activation_bits

MAX_SAMPLES = 1 << 18  # calibration values kept per layer for percentile and MSE ranges
MSE_GRID = 80  # clip ratios searched, from 1 down to MSE_MIN_RATIO
MSE_MIN_RATIO = 0.2
_TINY = 1e-12


def feature_dim(module: nn.Module) -> int:
    """The dimension of the module's input that holds the features (per-token ranges
    reduce over it): the last one for linear layers, the channels for convolutions."""
    if is_linear_like(module):
        return -1
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return 1
    raise ValueError(f"activation quantization applies to linear and convolution inputs, "
                     f"not to {type(module).__name__}")


def supports_activation_quant(module: nn.Module) -> bool:
    """False for layers whose input is not a float tensor (embeddings look up token ids)."""
    try:
        feature_dim(module)
    except ValueError:
        return False
    return True


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    if symmetric:
        top = 2 ** (bits - 1) - 1
        return -top, top
    return 0, 2**bits - 1


def _scale_zero(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool):
    """Scale and zero point (float tensors, zero integer-valued) for ranges [lo, hi]."""
    qmin, qmax = code_range(bits, symmetric)
    if symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()) / qmax
        return scale.clamp_min(_TINY), torch.zeros_like(scale)
    lo, hi = lo.clamp_max(0), hi.clamp_min(0)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(_TINY)
    zero = (qmin - lo / scale).round().clamp(qmin, qmax)
    return scale, zero


def _codes(x: torch.Tensor, scale, zero, bits: int, symmetric: bool) -> torch.Tensor:
    qmin, qmax = code_range(bits, symmetric)
    return (x / scale + zero).round().clamp(qmin, qmax)


@dataclass(frozen=True)
class ActivationQuantizer:
    """The quantizer of one layer's input at `bits`: static (`scale`, `zero` per tensor) or
    dynamic (per token along `dim`)."""

    bits: int
    mode: str
    symmetric: bool
    dim: int  # the feature dimension (per-token ranges reduce over it)
    scale: float | None = None  # static only
    zero: float | None = None

    def __post_init__(self):
        check_activation_bits(self.bits)
        if self.bits >= FULL_PRECISION_BITS:
            raise ValueError("a 16-bit activation is not quantized: no quantizer")
        if self.mode == "static" and self.scale is None:
            raise ValueError("a static activation quantizer needs its calibrated scale")

    def _params(self, x: torch.Tensor):
        if self.mode == "static":
            return (torch.tensor(self.scale, dtype=torch.float32, device=x.device),
                    torch.tensor(self.zero, dtype=torch.float32, device=x.device))
        xf = x.float()
        lo = xf.amin(dim=self.dim, keepdim=True)
        hi = xf.amax(dim=self.dim, keepdim=True)
        return _scale_zero(lo, hi, self.bits, self.symmetric)

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(integer codes, scale, zero), so that x ≈ scale · (codes − zero); per-token
        scales and zeros keep the feature dimension as size 1."""
        scale, zero = self._params(x)
        codes = _codes(x.float(), scale, zero, self.bits, self.symmetric)
        return codes.to(torch.int32), scale, zero

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Q(x): quantize-dequantize, in x's dtype."""
        scale, zero = self._params(x)
        codes = _codes(x.float(), scale, zero, self.bits, self.symmetric)
        return ((codes - zero) * scale).to(x.dtype)

    def record(self) -> dict:
        """What the artifact stores of the quantizer."""
        out = {"bits": self.bits, "mode": self.mode, "symmetric": self.symmetric, "dim": self.dim}
        if self.mode == "static":
            out.update(scale=self.scale, zero=self.zero)
        return out

    @classmethod
    def from_record(cls, record: Mapping) -> ActivationQuantizer:
        return cls(int(record["bits"]), record["mode"], bool(record["symmetric"]), int(record["dim"]),
                   record.get("scale"), record.get("zero"))


# --- calibration of static ranges ----------------------------------------------------


@dataclass
class ActivationStats:
    """What the calibration inputs of one layer tell about their range: min, max and a
    uniform subsample of the values (for percentile and MSE ranges)."""

    lo: float
    hi: float
    samples: torch.Tensor  # float32, at most MAX_SAMPLES values, min and max included
    dim: int

    def range(self, bits: int, scheme: ActivationScheme) -> tuple[float, float]:
        """The clipping range [lo, hi] the static quantizer at `bits` uses."""
        if scheme.range == "minmax":
            return self.lo, self.hi
        if scheme.range == "percentile":
            s = self.samples.double()
            q = scheme.percentile / 100
            return float(torch.quantile(s, 1 - q)), float(torch.quantile(s, q))
        return self._mse_range(bits, scheme.symmetric)

    def _mse_range(self, bits: int, symmetric: bool) -> tuple[float, float]:
        x = self.samples
        best, best_err = (self.lo, self.hi), float("inf")
        for i in range(MSE_GRID):
            r = 1.0 - (1.0 - MSE_MIN_RATIO) * i / (MSE_GRID - 1)
            lo, hi = torch.tensor(self.lo * r), torch.tensor(self.hi * r)
            scale, zero = _scale_zero(lo, hi, bits, symmetric)
            err = float(((_codes(x, scale, zero, bits, symmetric) - zero) * scale - x).double().pow(2).sum())
            if err < best_err:
                best, best_err = (self.lo * r, self.hi * r), err
        return best

    def quantizer(self, bits: int, scheme: ActivationScheme) -> ActivationQuantizer:
        lo, hi = self.range(bits, scheme)
        scale, zero = _scale_zero(torch.tensor(lo), torch.tensor(hi), bits, scheme.symmetric)
        return ActivationQuantizer(bits, "static", scheme.symmetric, self.dim, float(scale), float(zero))


class _Observer:
    def __init__(self, dim: int, max_samples: int, gen: torch.Generator):
        self.dim, self.max_samples, self.gen = dim, max_samples, gen
        self.lo, self.hi = float("inf"), float("-inf")
        self.chunks: list[torch.Tensor] = []
        self.seen = 0

    def __call__(self, module, args, kwargs):
        x = (args[0] if args else next(iter(kwargs.values()))).detach().float().reshape(-1).cpu()
        if x.numel() == 0:
            return
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        self.seen += x.numel()
        keep = min(x.numel(), self.max_samples)
        idx = torch.randperm(x.numel(), generator=self.gen)[:keep]
        self.chunks.append(x[idx])

    def stats(self, name: str) -> ActivationStats:
        if not self.chunks:
            raise ValueError(f"layer {name} was not run by the calibration forward: "
                             "its input range cannot be calibrated")
        x = torch.cat(self.chunks)
        if x.numel() > self.max_samples:  # thin to the cap, uniformly over the batches
            x = x[torch.randperm(x.numel(), generator=self.gen)[:self.max_samples]]
        x = torch.cat([x, torch.tensor([self.lo, self.hi])])
        return ActivationStats(self.lo, self.hi, x, self.dim)


@torch.no_grad()
def calibrate(model: nn.Module, names: Sequence[str], runs: Sequence[Callable[[nn.Module], object]],
              max_samples: int = MAX_SAMPLES, seed: int = 0) -> dict[str, ActivationStats]:
    """The input statistics of each named layer over the calibration runs (each runs the
    model on one calibration batch), the model as it is."""
    modules = dict(model.named_modules())
    gen = torch.Generator().manual_seed(seed)
    observers = {n: _Observer(feature_dim(modules[n]), max_samples, gen) for n in names}
    handles = [modules[n].register_forward_pre_hook(observers[n], with_kwargs=True) for n in names]
    try:
        for run in runs:
            run(model)
    finally:
        for h in handles:
            h.remove()
    return {n: observers[n].stats(n) for n in names}


def make_quantizer(bits: int, scheme: ActivationScheme, module: nn.Module,
                   stats: ActivationStats | None = None) -> ActivationQuantizer:
    """The quantizer of `module`'s input at `bits`: from `stats` when static."""
    if scheme.mode == "dynamic":
        return ActivationQuantizer(bits, "dynamic", scheme.symmetric, feature_dim(module))
    if stats is None:
        raise ValueError("static activation ranges need the calibration statistics")
    return stats.quantizer(bits, scheme)


# --- applying quantizers to a model ------------------------------------------------------


class InputFakeQuant:
    """A forward pre-hook replacing a module's input by its fake-quantized value."""

    def __init__(self, quantizer: ActivationQuantizer):
        self.quantizer = quantizer

    def __call__(self, module, args, kwargs):
        if args:
            return (self.quantizer.fake_quantize(args[0]), *args[1:]), kwargs
        key = next(iter(kwargs))
        return args, {**kwargs, key: self.quantizer.fake_quantize(kwargs[key])}


def attach(model: nn.Module, quantizers: Mapping[str, ActivationQuantizer]) -> list:
    """Register the input quantizers on the named modules (kept: the handles are returned)."""
    modules = dict(model.named_modules())
    unknown = sorted(set(quantizers) - set(modules))
    if unknown:
        raise ValueError(f"no such layers in the model: {', '.join(unknown)}")
    return [modules[n].register_forward_pre_hook(InputFakeQuant(q), with_kwargs=True)
            for n, q in quantizers.items()]


@contextlib.contextmanager
def quantized_inputs(model: nn.Module, quantizers: Mapping[str, ActivationQuantizer]):
    """The named layers' inputs fake-quantized inside; hooks removed after."""
    handles = attach(model, quantizers)
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def attach_records(model: nn.Module, records: Mapping[str, Mapping]) -> list:
    """Re-attach the input quantizers an artifact stored (`ActivationQuantizer.record`)."""
    return attach(model, {n: ActivationQuantizer.from_record(r) for n, r in records.items()})


def squared_error(quantizer: ActivationQuantizer, x: torch.Tensor) -> float:
    """‖Q(x) − x‖² in float64."""
    return float((quantizer.fake_quantize(x.float()) - x.float()).double().pow(2).sum())


__all__ = ["ActivationQuantizer", "ActivationStats", "InputFakeQuant", "attach", "attach_records",
           "calibrate", "code_range", "feature_dim", "make_quantizer", "quantized_inputs",
           "squared_error", "supports_activation_quant"]
