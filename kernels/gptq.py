"""GPTQ (Frantar et al., 2023): quantize a weight column by column, pushing each
column's rounding error onto the columns not yet quantized through the inverse
Hessian of the layer inputs, so ‖XWᵀ − XŴᵀ‖² stays small where RTN only keeps
‖W − Ŵ‖² small.

H = 2XᵀX/n + λI with λ = damping · mean(diag H) (`kernels.hessian.LayerHessian`).
The rows of U = chol(H⁻¹)ᵀ (upper) give every column's update; columns are taken
in blocks, and the rest of the matrix is updated once per block (the "lazy batch"
update; exact, only the order of additions changes). Input columns the calibration
data never excites (diag H = 0) get H_jj = 1: they are rounded and pass no error on.

The grid is RTN's (`kernels.quantizer`: scale, zero point, clipping and rounding
rules); the result is a `QuantizedWeight`, so packing, the artifact and fake
quantization are the same path for every algorithm.

Groups. Without act-order a group's scale and zero point are fitted when the pass
reaches its first column, from the group's current (already error-updated)
weights. With act-order the columns are processed by decreasing diag(H), which
would scatter a group's columns over the pass; instead the groups stay contiguous
along K ("static groups", as AutoGPTQ's `static_groups`): their parameters are
fitted from the original weight before the pass, and each column uses its own
group's. The codes are stored in the original column order, so the packed layout
needs no permutation index (no g_idx): packing, the kernels and every export read
it unchanged. `column_order` gives the order the pass used.
"""

from __future__ import annotations

import torch

from kernels.hessian import LayerHessian
from kernels.quantizer import (
    QuantizedWeight,
    as_matrix,
    grid_codes,
    group_params,
    group_view,
)
from kernels.scheme import QuantConfig


class CalibrationError(ValueError):
    """The calibration data cannot support a layer's Hessian."""


def column_order(hessian: torch.Tensor, act_order: bool) -> torch.Tensor:
    """The order GPTQ quantizes the columns in: 0..K−1, or by decreasing diag(H)
    (stable, so equal diagonals keep their order)."""
    k = hessian.shape[0]
    if not act_order:
        return torch.arange(k)
    return torch.sort(torch.diagonal(hessian), descending=True, stable=True).indices


def damped_hessian(hessian: LayerHessian, damping: float, name: str = "layer") -> torch.Tensor:
    """H = 2XᵀX/n with dead columns set to 1 and λ = damping · mean(diag) added (float64)."""
    if hessian.rows == 0:
        raise CalibrationError(f"{name}: the calibration data never reaches this layer, so it has "
                               "no input Hessian; give calibration data that runs through it")
    h = hessian.gptq_matrix().clone()
    if not torch.isfinite(h).all():
        raise CalibrationError(f"{name}: the calibration inputs of this layer hold inf or NaN")
    diag = torch.diagonal(h)
    dead = diag == 0
    h[dead, dead] = 1.0
    diag += damping * diag.mean()
    return h


def inverse_cholesky(h: torch.Tensor, hessian: LayerHessian, damping: float,
                     name: str = "layer") -> torch.Tensor:
    """U with UᵀU = H⁻¹ (upper triangular, float64); CalibrationError when H is not
    positive definite even with the damping (too few calibration rows for K)."""
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info) == 0:
        inv = torch.cholesky_inverse(chol)
        u, info = torch.linalg.cholesky_ex(inv, upper=True)
        if int(info) == 0 and torch.isfinite(u).all():
            return u
    raise CalibrationError(
        f"{name}: the Hessian of its inputs (K={hessian.k}, from {hessian.rows} calibration rows, "
        f"rank {hessian.rank()}) is not positive definite even with damping {damping} × its mean "
        "diagonal; give more calibration data (at least K rows is safe) or a larger damping")


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, hessian: LayerHessian, config: QuantConfig, *,
                  damping: float = 0.01, act_order: bool = False, block_size: int = 128,
                  name: str = "layer", dtype: torch.dtype = torch.float32) -> QuantizedWeight:
    """GPTQ codes of `weight` (its (out, K) quantizer view, any rank) under `config`'s
    grid, from the calibration inputs' `hessian`. `dtype` is the arithmetic of the pass
    (the inverse Hessian is always formed in float64)."""
    if not config.quantized:
        raise ValueError("16-bit is not quantized; keep the weight as it is")
    w = as_matrix(weight.detach()).to(dtype).clone()
    rows, k = w.shape
    if hessian.k != k:
        raise ValueError(f"{name}: the Hessian is {hessian.k}×{hessian.k}, the weight has K={k}")
    g = config.group_size_for(k)
    groups = -(-k // g)
    h = damped_hessian(hessian, damping, name)
    order = column_order(h, act_order)
    scales = torch.empty(rows, groups, dtype=dtype)
    zeros = torch.empty(rows, groups, dtype=dtype)
    if act_order:  # static groups: fitted from the original weight, contiguous along K
        s, z = group_params(group_view(w, g), config)
        scales.copy_(s), zeros.copy_(z)
        w, h = w[:, order], h[order][:, order]
    u = inverse_cholesky(h, hessian, damping, name).to(dtype)
    group_of = torch.div(order, g, rounding_mode="floor")
    codes = torch.empty(rows, k, dtype=dtype)
    # without act-order a block holds whole groups, so a group is fitted from current weights
    block = block_size if act_order else -(-block_size // g) * g
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].clone()
        u1 = u[i1:i2, i1:i2]
        err = torch.zeros(rows, i2 - i1, dtype=dtype)
        for i in range(i2 - i1):
            col = i1 + i
            grp = int(group_of[col])
            if not act_order and col % g == 0:
                s, z = group_params(group_view(w1[:, i:i + g], g), config)
                scales[:, grp], zeros[:, grp] = s[:, 0], z[:, 0]
            s, z = scales[:, grp:grp + 1], zeros[:, grp:grp + 1]
            q = grid_codes(w1[:, i].reshape(rows, 1, 1), s, z, config).reshape(rows)
            codes[:, col] = q
            e = (w1[:, i] - (q - z[:, 0]) * s[:, 0]) / u1[i, i]
            w1[:, i:].addr_(e, u1[i, i:], alpha=-1)
            err[:, i] = e
        w[:, i2:].addmm_(err, u[i1:i2, i2:], alpha=-1)
    if act_order:
        codes = codes[:, torch.argsort(order)]
    return QuantizedWeight(
        codes=codes.to(torch.uint8),
        scales=scales.half(),
        zeros=zeros.to(torch.uint8),
        shape=tuple(weight.shape),
        config=config,
    )


def output_error(weight: torch.Tensor, dequantized: torch.Tensor, hessian: LayerHessian) -> float:
    """Mean squared layer-output error over the calibration rows,
    ‖XWᵀ − XŴᵀ‖² / n = tr(ΔW XᵀX ΔWᵀ) / n (float64)."""
    delta = (as_matrix(weight.detach()) - as_matrix(dequantized.detach())).double()
    return float(((delta @ hessian.xtx.double()) * delta).sum() / max(hessian.rows, 1))
