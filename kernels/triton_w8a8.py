"""The W8A8 integer GEMM (and any pair of widths at most 8 bits) as one Triton kernel:
y (M, N) = s_a · Σ_g s_w,g · acc_g + bias, with per weight group g

    acc_g = Σ_k∈g a_k w_k − z_a·colsum_g(W) − rowsum_g(A)·z_w + |g|·z_a·z_w

— what `kernels.int8.accumulators` computes with one `torch._int_mm` per group, fused: each
program owns a (BLOCK_M, BLOCK_N) tile, multiplies int8 tiles with `tl.dot` into an int32
accumulator group by group (fp32 operands under TRITON_INTERPRET=1, exact for the small
shapes tested there), applies the zero-point corrections and the group's fp32 scale, and
finally the rows' input scale and the bias.

Operands (`kernels.int8`): a (M, K) int8 input codes, row_scale (M,) fp32, row_zero (M,)
int32 or None (symmetric input); w (N, K) int8 weight codes, w_scales (G, N) fp32,
w_zeros (G, N) int32 or None (symmetric weight), colsums (G, N) int32. The int32
accumulator holds |g|·255·255, so groups are at most MAX_GROUP long.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_launch import interpreting

INTERPRETED = interpreting()
MAX_GROUP = 32768  # 32768 · 255 · 255 < 2^31
MIN_GROUP = 32  # the K tile of the int8 tl.dot


def _configs() -> list[triton.Config]:
    if INTERPRETED:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=4)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=4 if bm * bn <= 64 * 64 else 8,
                          num_stages=3)
            for bm in (16, 32, 64, 128) for bn in (64, 128)]


def _prune(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, args["M_BUCKET"])]
    return kept or configs[:1]


@triton.autotune(configs=_configs(), key=["M_BUCKET", "N", "K", "G", "A_ZERO", "W_ZERO"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _w8a8_kernel(
    a_ptr, w_ptr, sa_ptr, za_ptr, sw_ptr, zw_ptr, cs_ptr, b_ptr, out_ptr,
    M, N, K, M_BUCKET, stride_am, stride_wn, stride_g, stride_om,
    G: tl.constexpr, A_ZERO: tl.constexpr, W_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if A_ZERO:
        za = tl.load(za_ptr + offs_m, mask=m_mask, other=0)
    for gi in range(0, tl.cdiv(K, G)):
        g0 = gi * G
        g_end = tl.minimum(g0 + G, K)
        if DOT_FP32:
            iacc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        else:
            iacc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        rsum = tl.zeros((BLOCK_M,), dtype=tl.int32)
        for k0 in range(g0, g_end, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < g_end
            a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :],
                        mask=m_mask[:, None] & k_mask[None, :], other=0)
            w = tl.load(w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None],
                        mask=n_mask[None, :] & k_mask[:, None], other=0)
            if DOT_FP32:
                iacc = tl.dot(a.to(tl.float32), w.to(tl.float32), iacc)
            else:
                iacc = tl.dot(a, w, iacc)
            if W_ZERO:
                rsum += tl.sum(a.to(tl.int32), axis=1)
        corr = iacc.to(tl.int32)
        if A_ZERO:
            cs = tl.load(cs_ptr + gi * stride_g + offs_n, mask=n_mask, other=0)
            corr -= za[:, None] * cs[None, :]
        if W_ZERO:
            zw = tl.load(zw_ptr + gi * stride_g + offs_n, mask=n_mask, other=0)
            corr -= rsum[:, None] * zw[None, :]
            if A_ZERO:
                corr += (g_end - g0) * za[:, None] * zw[None, :]
        sw = tl.load(sw_ptr + gi * stride_g + offs_n, mask=n_mask, other=0.0)
        acc += corr.to(tl.float32) * sw[None, :]
    sa = tl.load(sa_ptr + offs_m, mask=m_mask, other=0.0)
    acc = acc * sa[:, None]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc,
             mask=m_mask[:, None] & n_mask[None, :])


def supports(group_size: int) -> bool:
    """Whether groups of this length go to the kernel (else the `torch._int_mm` path)."""
    return MIN_GROUP <= group_size <= MAX_GROUP


def w8a8_forward(a: torch.Tensor, row_scale: torch.Tensor, row_zero: torch.Tensor | None,
                 w: torch.Tensor, w_scales: torch.Tensor, w_zeros: torch.Tensor | None,
                 colsums: torch.Tensor, bias: torch.Tensor | None, group_size: int) -> torch.Tensor:
    """y (M, N) fp32 from the int8 operands (module docstring); ValueError on bad operands."""
    if a.dtype != torch.int8 or w.dtype != torch.int8 or a.dim() != 2 or w.dim() != 2:
        raise ValueError("w8a8_forward takes 2-D int8 input and weight codes")
    m, k = a.shape
    n = w.shape[0]
    if w.shape[1] != k:
        raise ValueError(f"input has {k} features, the weight {w.shape[1]}")
    if not supports(group_size):
        raise ValueError(f"groups of {group_size}: the kernel takes {MIN_GROUP} to {MAX_GROUP}")
    groups = -(-k // group_size)
    if tuple(w_scales.shape) != (groups, n) or tuple(colsums.shape) != (groups, n):
        raise ValueError(f"scales and column sums must be ({groups}, {n})")
    if a.device.type != "cuda" and not INTERPRETED:
        raise ValueError("the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1)")
    a, w = a.contiguous(), w.contiguous()
    sw = w_scales.float().contiguous()
    cs = colsums.to(torch.int32).contiguous()
    zw = cs if w_zeros is None else w_zeros.to(torch.int32).contiguous()
    sa = row_scale.float().reshape(-1).expand(m).contiguous()
    za = sa if row_zero is None else row_zero.to(torch.int32).reshape(-1).expand(m).contiguous()
    out = torch.empty(m, n, dtype=torch.float32, device=a.device)
    if m == 0:
        return out

    def grid(cfg):
        return (triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(m, cfg["BLOCK_M"]))

    _w8a8_kernel[grid](
        a, w, sa, za, sw, zw, cs, sw if bias is None else bias, out,
        m, n, k, min(128, triton.next_power_of_2(m)), a.stride(0), w.stride(0), sw.stride(0),
        out.stride(0),
        G=group_size, A_ZERO=row_zero is not None, W_ZERO=w_zeros is not None,
        HAS_BIAS=bias is not None, DOT_FP32=INTERPRETED, BLOCK_K=MIN_GROUP,
    )
    return out
