"""AdaQuant-style layer-wise calibration (Hubara et al., "Improving Post Training
Neural Quantization: Layer-wise Calibration and Integer Programming"): optimise the
quantized layer itself over the calibration set, minimising its output error
‖XWᵀ − XŴᵀ‖², plus the paper's global statistics tuning (bias correction,
BatchNorm re-estimation).

What is learned, per layer, with Adam for a fixed number of full-batch steps (no
sampling, so the result is deterministic): a continuous offset V of every weight in
grid steps (the weight "within its grid": codes = round(W/s + V) + z, clamped), the
log of every group's scale, and for asymmetric grids a continuous shift of every
zero point; rounding passes its gradient straight through (STE). The start is a
given solution (the job's GPTQ codes), and the best iterate on the calibration
objective is kept, so the result is never worse there than its start.

The objective needs only the inputs' second moment: ‖XΔWᵀ‖²/n = ‖ΔW F‖² with
F Fᵀ = XᵀX/n (an eigen-factor truncated to the numerical rank, so each step costs
rows × K × rank). A layer with a bias also absorbs the mean error into it: with
b̂ = b + ΔW μ (μ the mean input, ΔW = W − Ŵ) the error is ΔW(x − μ), so the
objective uses the covariance XᵀX/n − μμᵀ instead, and `bias_shift` = ΔW μ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from kernels.hessian import LayerHessian
from kernels.quantizer import QuantizedWeight, as_matrix
from kernels.scheme import QuantConfig

_MIN_SCALE = 1e-6  # as kernels.quantizer: scales stay away from zero


@dataclass(frozen=True)
class AdaQuantResult:
    quantized: QuantizedWeight
    bias_shift: torch.Tensor | None  # add to the layer's bias (ΔW μ), None without a bias
    start_error: float  # the objective at the start and at the result (mean over rows)
    error: float


def error_factor(hessian: LayerHessian, centred: bool) -> torch.Tensor:
    """F (K × rank, float32) with F Fᵀ = XᵀX/n, or the covariance when `centred`."""
    m = hessian.xtx.double() / max(hessian.rows, 1)
    if centred:
        mu = hessian.mean()
        m = m - torch.outer(mu, mu)
    eig, vec = torch.linalg.eigh(m)
    keep = eig > 1e-10 * eig.max().clamp_min(1e-300)
    return (vec[:, keep] * eig[keep].sqrt()).float()


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class _Grid:
    """The learnable quantized weight of one (rows, K) matrix on `config`'s grid."""

    def __init__(self, w: torch.Tensor, start: QuantizedWeight, config: QuantConfig):
        self.w, self.config = w, config
        rows, k = w.shape
        self.k, self.g = k, config.group_size_for(k)
        self.lo, self.hi = config.min_code, 2**config.bits - 1
        self.scale0 = start.scales.float()
        self.zero0 = start.zeros.float()
        codes = start.codes.float()
        # V so that round(W/s + V) + z is exactly the start's codes
        self.v = ((codes - self._expand(self.zero0)) - w / self._expand(self.scale0)).requires_grad_()
        self.log_scale = torch.zeros_like(self.scale0, requires_grad=True)
        self.zero_shift = torch.zeros_like(self.zero0, requires_grad=not config.symmetric)

    def _expand(self, per_group: torch.Tensor) -> torch.Tensor:
        return per_group.repeat_interleave(self.g, dim=1)[:, :self.k]

    def params(self) -> list[torch.Tensor]:
        return [self.v, self.log_scale] + ([] if self.config.symmetric else [self.zero_shift])

    def scale_zero(self, hard: bool):
        scale = (self.scale0 * self.log_scale.exp()).clamp_min(_MIN_SCALE)
        zero = (self.zero0 + self.zero_shift).clamp(0, 2**self.config.bits - 1)
        if hard:
            scale, zero = scale.detach().half().float(), torch.round(zero.detach())
        else:
            zero = _round_ste(zero)
        return scale, zero

    def codes(self, hard: bool) -> torch.Tensor:
        scale, zero = self.scale_zero(hard)
        s, z = self._expand(scale), self._expand(zero)
        x = self.w / s + self.v
        q = (torch.round(x.detach()) if hard else _round_ste(x)) + z
        return q.clamp(self.lo, self.hi), s, z

    def dequantized(self, hard: bool) -> torch.Tensor:
        q, s, z = self.codes(hard)
        return (q - z) * s

    def result(self, shape: tuple[int, ...]) -> QuantizedWeight:
        scale, zero = self.scale_zero(hard=True)
        q, _, _ = self.codes(hard=True)
        return QuantizedWeight(codes=q.detach().to(torch.uint8), scales=scale.half(),
                               zeros=zero.to(torch.uint8), shape=shape, config=self.config)


def _objective(w: torch.Tensor, w_hat: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return ((w - w_hat) @ factor).pow(2).sum()


def adaquant_quantize(weight: torch.Tensor, hessian: LayerHessian, start: QuantizedWeight, *,
                      steps: int = 100, lr: float = 0.05, has_bias: bool = False) -> AdaQuantResult:
    """Calibrate the quantized form of `weight` ((out, K) quantizer view, any rank),
    starting from `start` (same grid config), on the inputs' `hessian`."""
    config = start.config
    w = as_matrix(weight.detach()).float()
    if hessian.k != w.shape[1]:
        raise ValueError(f"the Hessian is {hessian.k}×{hessian.k}, the weight has K={w.shape[1]}")
    factor = error_factor(hessian, centred=has_bias)
    grid = _Grid(w, start, config)
    with torch.no_grad():
        best_q = start
        start_error = best = float(_objective(w, as_matrix(start.dequantize()), factor))
    if factor.shape[1] and steps:
        opt = torch.optim.Adam(grid.params(), lr=lr)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            with torch.enable_grad():  # callers may hold no_grad (a model-wide pass)
                loss = _objective(w, grid.dequantized(hard=False), factor)
                loss.backward()
            opt.step()
            with torch.no_grad():
                hard = float(_objective(w, grid.dequantized(hard=True), factor))
                if hard < best:
                    best, best_q = hard, grid.result(start.shape)
    shift = None
    if has_bias:
        delta = (w - as_matrix(best_q.dequantize())).double()
        shift = (delta @ hessian.mean()).float()
    return AdaQuantResult(quantized=best_q, bias_shift=shift, start_error=start_error, error=best)


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, run_calibration: Callable[[nn.Module], None]) -> int:
    """AdaQuant's BatchNorm tuning: recompute every BatchNorm's running mean and
    variance on the quantized model's own activations (a cumulative average over the
    calibration batches `run_calibration(model)` feeds). The rest of the model stays
    in eval mode. Returns the number of BatchNorm layers re-estimated."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in norms]
    model.eval()
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch counts the same
            m.train()
        run_calibration(model)
    finally:
        for m, momentum in momenta:
            m.momentum = momentum
        for m, training in modes:
            m.training = training
    return len(norms)

