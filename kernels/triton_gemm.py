"""Weight-only tiled GEMM with optional split-K, for two or more rows of activations:
y (M, N) = x (M, K) @ dequant(Wq)^T + bias.

x (M, K) fp16/bf16; qweight (K_pad * b / 32, N) int32; scales (G, N); zeros
(G, N_pad * b / 32) int32 (see `kernels.packed_weight`). Each program owns a
(BLOCK_M, BLOCK_N) output tile and one of SPLIT_K slices of K; weight tiles are
dequantized in registers and multiplied with `tl.dot` in x's dtype with fp32
accumulation (fp32 operands under TRITON_INTERPRET=1, whose bf16 dot is wrong).
Slices accumulate into an fp32 output with atomic adds; the launcher casts to x's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_dequant import dequant_tile
from kernels.triton_launch import check_triton_operands, interpreting, plane_meta

INTERPRETED = interpreting()


def _configs() -> list[triton.Config]:
    if INTERPRETED:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "SPLIT_K": 2},
                              num_warps=4)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk},
                      num_warps=4 if bm * bn <= 64 * 64 else 8, num_stages=3)
        for bm in (16, 32, 64, 128)
        for bn in (64, 128)
        for bk in (32, 64, 128)
        for sk in (1, 2, 4)
        if not (bm == 128 and sk > 1)
    ]


def _prune(configs, named_args, **kwargs):
    """Keep BLOCK_M within the rows (bucketed), BLOCK_K within a group when groups hold
    at least 32 values, and at least one K tile per split."""
    args = {**named_args, **kwargs}
    m, n, k, g = args["M_BUCKET"], args["N"], args["K"], args["G"]
    kept = [
        c for c in configs
        if c.kwargs["BLOCK_M"] <= max(16, m)
        and c.kwargs["BLOCK_N"] <= max(64, triton.next_power_of_2(n))
        and (g < 32 or c.kwargs["BLOCK_K"] <= g)
        and c.kwargs["BLOCK_K"] * c.kwargs["SPLIT_K"] <= max(32, triton.next_power_of_2(k))
    ]
    return kept or configs[:1]


def rows_bucket(m: int) -> int:
    """Autotuning bucket of a row count: the next power of two, at most 128."""
    return min(128, triton.next_power_of_2(m))


@triton.autotune(configs=_configs(), key=["M_BUCKET", "N", "K", "G", "P0", "P1", "SYMMETRIC"],
                 prune_configs_by={"early_config_prune": _prune}, reset_to_zero=["out_ptr"])
@triton.jit
def _gemm_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, out_ptr,
    M, N, K, M_BUCKET, stride_xm, stride_om, stride_qw, stride_s, stride_z,
    qw_plane1, z_plane1,
    # --- quantization ---
    G: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, SYMMETRIC: tl.constexpr,
    HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr,
    # --- tiling ---
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    k_span = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_start = pid_k * k_span
    k_end = tl.minimum(k_start + k_span, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=m_mask[:, None] & (offs_k[None, :] < K), other=0.0)
        w = dequant_tile(qw_ptr, s_ptr, z_ptr, k0, offs_k, offs_n, K, N,
                         stride_qw, stride_s, stride_z, qw_plane1, z_plane1,
                         G, P0, P1, SYMMETRIC, BLOCK_K)
        if DOT_FP32:
            acc = tl.dot(a.to(tl.float32), w, acc)
        else:
            acc = tl.dot(a, w.to(a.dtype), acc)
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        acc += tl.where(pid_k == 0, bias, 0.0)[None, :]
    out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(out, acc, mask=mask)
    else:
        tl.atomic_add(out, acc, mask=mask)


def gemm_forward(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                 zeros: torch.Tensor, bias: torch.Tensor | None, bits: int, group_size: int,
                 in_features: int, symmetric: bool) -> torch.Tensor:
    """x (M, K) fp16/bf16 -> y (M, N) in x's dtype. `group_size` is the effective one
    (min(g, K)); raises ValueError on inconsistent shapes, dtypes or devices."""
    check_triton_operands(x, qweight, scales, zeros, bias, bits, group_size, in_features,
                          symmetric, INTERPRETED)
    m, n = x.shape[0], scales.shape[1]
    if m < 1:
        raise ValueError("x has no rows")
    meta = plane_meta(bits, in_features, n)
    out = torch.zeros(m, n, dtype=torch.float32, device=x.device)

    def grid(cfg):
        return (triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(m, cfg["BLOCK_M"]), cfg["SPLIT_K"])

    _gemm_kernel[grid](
        x, qweight, scales, scales if symmetric else zeros, scales if bias is None else bias, out,
        m, n, in_features, rows_bucket(m), x.stride(0), out.stride(0), qweight.stride(0),
        scales.stride(0), 0 if symmetric else zeros.stride(0), meta.qw_plane1, meta.z_plane1,
        G=group_size, P0=meta.p0, P1=meta.p1, SYMMETRIC=symmetric, HAS_BIAS=bias is not None,
        DOT_FP32=INTERPRETED,
    )
    return out.to(x.dtype)
