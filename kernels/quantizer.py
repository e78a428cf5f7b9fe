"""Uniform weight quantizer: scales, zero points, rounding, clipping, size accounting.

A weight of any rank is viewed as a matrix (rows = dim 0, K = the rest flattened)
and quantized in groups of `group_size` consecutive values along K; when K is
smaller than the group size the whole row is one group (per output channel).
The last group of a row may be partial when K is not a multiple of the group size.

Scales are stored (and applied) in fp16, so the fake-quantized weight equals what
the packed kernels compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kernels.scheme import QuantConfig

_MIN_SCALE = 1e-6  # keeps fp16 scales away from zero; groups this flat are zero anyway
_CLIP_GRID = 20  # MSE clipping tries ratios 1.0, 0.975, ... down to 0.525


@dataclass(frozen=True)
class QuantizedWeight:
    """Integer codes with per-group fp16 scales and integer zero points.

    codes: (rows, K) uint8 in [0, 2^bits - 1]; scales: (rows, groups) fp16;
    zeros: (rows, groups) uint8. value = (code - zero) * scale.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    shape: tuple[int, ...]
    config: QuantConfig

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        g = self.config.group_size_for(self.codes.shape[1])
        scale = _expand_groups(self.scales.float(), g, self.codes.shape[1])
        zero = _expand_groups(self.zeros.float(), g, self.codes.shape[1])
        return ((self.codes.float() - zero) * scale).reshape(self.shape).to(dtype)


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(rows, K) view of a weight: Linear (out, in), Conv (out, in*kh*kw), Embedding (n, d)."""
    return weight.reshape(weight.shape[0], -1)




def quantize(weight: torch.Tensor, config: QuantConfig) -> QuantizedWeight:
    """Quantize `weight` (any float dtype) to integer codes; requires bits < 16."""
    if config.grid == "gguf":
        raise ValueError("the gguf grid stores GGUF blocks, not uniform groups: its codes come "
                         "from kernels.gguf_quants.encode (export 'gguf-plan')")
    if not config.quantized:
        raise ValueError("16-bit is not quantized; keep the weight as it is")
    w = as_matrix(weight.detach()).float()
    rows, k = w.shape
    g = config.group_size_for(k)
    padded = _pad_to_groups(w, g)  # (rows, groups, g), padding repeats the last value
    scales, zeros = _search_params(padded, config)
    codes = _codes(padded, scales, zeros, config).reshape(rows, -1)[:, :k]
    return QuantizedWeight(
        codes=codes.to(torch.uint8),
        scales=scales.half(),
        zeros=zeros.to(torch.uint8),
        shape=tuple(weight.shape),
        config=config,
    )


def sixteen_bit_dtype(dtype: torch.dtype) -> torch.dtype:
    """The 16-bit dtype a layer left at 16 bits is stored in."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float16


ERROR_BLOCK_ELEMENTS = 1 << 22  # weights per block of rows in `fake_quantize` and `quantization_error`


def fake_quantize(weight: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """Q_b(W): quantize then dequantize, same shape and dtype as `weight`. At 16 bits
    the weight is rounded to its 16-bit storage dtype, as the artifact stores it. On the
    gguf grid: the weight through its GGUF type (`kernels.gguf_quants`; 16 bits is F16).
    Rows are quantized independently, so a large matrix goes in blocks of rows (the
    temporaries of a block, not of the matrix)."""
    step = max(1, ERROR_BLOCK_ELEMENTS // max(math.prod(weight.shape[1:]), 1))
    if weight.dim() == 2 and weight.shape[0] > step:
        out = torch.empty_like(weight)
        for r in range(0, weight.shape[0], step):
            out[r:r + step] = _fake_quantize(weight[r:r + step], config)
        return out
    return _fake_quantize(weight, config)


def _fake_quantize(weight: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    if config.grid == "gguf":
        from kernels.gguf_quants import fake_quantize as gguf_fake_quantize

        return gguf_fake_quantize(weight, config)
    if not config.quantized:
        return weight.detach().to(sixteen_bit_dtype(weight.dtype)).to(weight.dtype)
    return quantize(weight, config).dequantize(weight.dtype)




def quantization_error(weight: torch.Tensor, config: QuantConfig) -> float:
    """‖Q_b(W) − W‖², accumulated in float64.

    Rows are quantized independently, so the error is summed over blocks of rows,
    which keeps the temporaries small (an LLM's embedding is 28M weights). For
    float32 weights it is taken in the group layout, without building the codes and
    the dequantized matrix (the sensitivity methods need it for every layer and
    width)."""
    if config.grid == "gguf":
        from kernels.gguf_quants import quantization_error as gguf_quantization_error

        return gguf_quantization_error(weight, config)
    w = as_matrix(weight.detach())
    rows, k = w.shape
    step = max(1, ERROR_BLOCK_ELEMENTS // k)
    return sum(_block_error(w[r:r + step], config) for r in range(0, rows, step))


def _block_error(w: torch.Tensor, config: QuantConfig) -> float:
    if not config.quantized or w.dtype != torch.float32:
        delta = fake_quantize(w, config).double() - w.double()
        return float(delta.pow(2).sum())
    k = w.shape[1]
    g = config.group_size_for(k)
    padded = _pad_to_groups(w, g)
    scale, zero = _search_params(padded, config)
    delta = _dequant(_codes(padded, scale, zero, config), scale, zero) - padded
    if k % g:  # the padding repeats the last value: count the real columns only
        delta = delta.reshape(delta.shape[0], -1)[:, :k]
    return float(torch.linalg.vector_norm(delta, dtype=torch.float64) ** 2)


# --- the grid, for the algorithms that choose the codes themselves ----------------
# (kernels.gptq, kernels.adaquant): the same scale, zero point and rounding rules as
# `quantize`, so every algorithm's result is a QuantizedWeight on the same grid.


def group_view(w: torch.Tensor, g: int) -> torch.Tensor:
    """(rows, K) -> (rows, groups, g); a partial last group repeats its last value."""
    return _pad_to_groups(w, g)


def group_params(groups: torch.Tensor, config: QuantConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (fp16-representable float32) and zero point of each group of a
    (rows, groups, g) tensor: its range, or the MSE-best clipped range."""
    return _search_params(groups, config)


def grid_codes(groups: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
               config: QuantConfig) -> torch.Tensor:
    """Round-to-nearest codes (float, clamped to the grid) of (rows, groups, g) values
    under per-group (rows, groups) scales and zero points."""
    return _codes(groups, scale, zero, config)


def grid_values(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """(code − zero) · scale for (rows, groups, g) codes."""
    return _dequant(codes, scale, zero)








# --- internals -----------------------------------------------------------------


def _pad_to_groups(w: torch.Tensor, g: int) -> torch.Tensor:
    rows, k = w.shape
    pad = -k % g
    if pad:
        w = torch.cat([w, w[:, -1:].expand(rows, pad)], dim=1)
    return w.reshape(rows, -1, g)


def _expand_groups(per_group: torch.Tensor, g: int, k: int) -> torch.Tensor:
    return per_group.repeat_interleave(g, dim=1)[:, :k]


def _levels(config: QuantConfig) -> int:
    return 2**config.bits - 1


def _params_for_range(lo: torch.Tensor, hi: torch.Tensor, config: QuantConfig):
    """Scale (fp16-rounded, as stored) and zero point for a per-group range [lo, hi]."""
    qmax = _levels(config)
    if config.symmetric:
        half = 2 ** (config.bits - 1)
        absmax = torch.maximum(lo.abs(), hi.abs())
        scale = (absmax / (half - 1)).clamp_min(_MIN_SCALE)
        zero = torch.full_like(scale, float(half))
    else:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)  # zero stays exactly representable
        scale = _fp16_not_above(((hi - lo) / qmax).clamp_min(_MIN_SCALE))
        zero = torch.round(-lo / scale).clamp(0, qmax)
        return scale, zero
    return scale.half().float(), zero


def _fp16_not_above(x: torch.Tensor) -> torch.Tensor:
    """The largest fp16 value not above x (within float32 noise), as float32.

    Rounding the asymmetric scale down keeps (hi − lo)/scale ≥ 2^b − 1, so the
    group's extremes land on codes 0 and 2^b − 1: the grid is fully used, and
    quantizing an already quantized weight gives it back unchanged."""
    x = x * (1 + 1e-6)
    s = x.half()
    above = s.float() > x
    s = torch.where(above, torch.nextafter(s, torch.zeros_like(s)), s)
    return s.float()


def _codes(padded, scale, zero, config):
    q = torch.round(padded / scale.unsqueeze(-1)) + zero.unsqueeze(-1)
    return q.clamp(config.min_code, _levels(config))


def _dequant(codes, scale, zero):
    return (codes - zero.unsqueeze(-1)) * scale.unsqueeze(-1)


def _search_params(padded: torch.Tensor, config: QuantConfig):
    lo, hi = padded.amin(dim=-1), padded.amax(dim=-1)
    scale, zero = _params_for_range(lo, hi, config)
    if not config.mse_clip:
        return scale, zero
    best_err = _group_error(padded, scale, zero, config)
    for i in range(1, _CLIP_GRID):
        ratio = 1.0 - i / (_CLIP_GRID * 2)
        s, z = _params_for_range(lo * ratio, hi * ratio, config)
        err = _group_error(padded, s, z, config)
        better = err < best_err
        scale, zero = torch.where(better, s, scale), torch.where(better, z, zero)
        best_err = torch.where(better, err, best_err)
    return scale, zero


def _group_error(padded, scale, zero, config):
    return (_dequant(_codes(padded, scale, zero, config), scale, zero) - padded).pow(2).sum(-1)
