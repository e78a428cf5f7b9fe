"""Weight-only GEMV for one row of activations: y (1, N) = x (1, K) @ dequant(Wq)^T + bias.

x (1, K) fp16/bf16; qweight (K_pad * b / 32, N) int32; scales (G, N); zeros
(G, N_pad * b / 32) int32 (see `kernels.packed_weight`). Each program owns BLOCK_N
output columns and one of SPLIT_K slices of K; it dequantizes (BLOCK_K, BLOCK_N) tiles
in registers and reduces with `tl.sum` (no tensor cores: one row is memory bound).
Slices accumulate into an fp32 output with atomic adds; the launcher casts to x's dtype.
Kernels defined under TRITON_INTERPRET=1 use a single config (multi-config autotuning
needs a GPU driver).
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
        return [triton.Config({"BLOCK_N": 64, "BLOCK_K": 64, "SPLIT_K": 2}, num_warps=4)]
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk}, num_warps=4, num_stages=2)
        for bn in (64, 128, 256)
        for bk in (32, 64, 128)
        for sk in (1, 2, 4, 8)
    ]


def _prune(configs, named_args, **kwargs):
    """Keep tiles no larger than the problem, BLOCK_K within a group when groups hold
    at least 32 values, and at least one K tile per split."""
    args = {**named_args, **kwargs}
    n, k, g = args["N"], args["K"], args["G"]
    kept = [
        c for c in configs
        if c.kwargs["BLOCK_N"] <= max(64, triton.next_power_of_2(n))
        and (g < 32 or c.kwargs["BLOCK_K"] <= g)
        and c.kwargs["BLOCK_K"] * c.kwargs["SPLIT_K"] <= max(32, triton.next_power_of_2(k))
    ]
    return kept or configs[:1]


@triton.autotune(configs=_configs(), key=["N", "K", "G", "P0", "P1", "SYMMETRIC"],
                 prune_configs_by={"early_config_prune": _prune}, reset_to_zero=["out_ptr"])
@triton.jit
def _gemv_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, out_ptr,
    N, K, stride_qw, stride_s, stride_z, qw_plane1, z_plane1,
    # --- quantization ---
    G: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, SYMMETRIC: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    # --- tiling ---
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_span = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_start = pid_k * k_span
    k_end = tl.minimum(k_start + k_span, K)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
        w = dequant_tile(qw_ptr, s_ptr, z_ptr, k0, offs_k, offs_n, K, N,
                         stride_qw, stride_s, stride_z, qw_plane1, z_plane1,
                         G, P0, P1, SYMMETRIC, BLOCK_K)
        acc += tl.sum(x[:, None] * w, axis=0)
    n_mask = offs_n < N
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        acc += tl.where(pid_k == 0, bias, 0.0)
    if SPLIT_K == 1:
        tl.store(out_ptr + offs_n, acc, mask=n_mask)
    else:
        tl.atomic_add(out_ptr + offs_n, acc, mask=n_mask)


def gemv_forward(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                 zeros: torch.Tensor, bias: torch.Tensor | None, bits: int, group_size: int,
                 in_features: int, symmetric: bool) -> torch.Tensor:
    """x (1, K) fp16/bf16 -> y (1, N) in x's dtype. `group_size` is the effective one
    (min(g, K)); raises ValueError on inconsistent shapes, dtypes or devices."""
    check_triton_operands(x, qweight, scales, zeros, bias, bits, group_size, in_features,
                          symmetric, INTERPRETED)
    if x.shape[0] != 1:
        raise ValueError(f"the GEMV kernel takes one row, got {x.shape[0]}; use gemm_forward")
    n = scales.shape[1]
    meta = plane_meta(bits, in_features, n)
    out = torch.zeros(n, dtype=torch.float32, device=x.device)

    def grid(cfg):
        return (triton.cdiv(n, cfg["BLOCK_N"]), cfg["SPLIT_K"])

    _gemv_kernel[grid](
        x, qweight, scales, scales if symmetric else zeros, scales if bias is None else bias, out,
        n, in_features, qweight.stride(0), scales.stride(0), 0 if symmetric else zeros.stride(0),
        meta.qw_plane1, meta.z_plane1,
        G=group_size, P0=meta.p0, P1=meta.p1, SYMMETRIC=symmetric, HAS_BIAS=bias is not None,
    )
    return out.to(x.dtype)[None, :]
