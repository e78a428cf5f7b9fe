"""Triton device functions shared by the weight-only matmul kernels: unpack a tile of
packed codes and dequantize it in registers, ((w >> shift) & mask - zero) * scale.

Operands follow `kernels.packed_weight`: qweight (K_pad * b / 32, N) int32 with bit
planes P0 (low bits) and P1 (high bits, 0 when b is a power of two) stacked along K;
scales (G, N); zeros (G, N_pad * b / 32) int32 with the planes stacked along N.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def unpack_plane(ptr, row0, col0, stride, offs_k, offs_n, mask, P: tl.constexpr):
    """Codes of one bit plane of width P at positions (offs_k, offs_n): the plane's
    value i along the packed dimension sits in word i // (32 / P) at bit (i % (32/P)) * P.
    offs_k indexes the packed dimension (rows), offs_n the other one (columns)."""
    PER_WORD: tl.constexpr = 32 // P
    words = tl.load(ptr + (row0 + offs_k // PER_WORD) * stride + col0 + offs_n, mask=mask,
                    other=0)
    return (words >> ((offs_k % PER_WORD) * P)) & ((1 << P) - 1)


@triton.jit
def group_params(s_ptr, z_ptr, stride_s, stride_z, z_plane1, grp, offs_n, mask,
                 P0: tl.constexpr, P1: tl.constexpr, SYMMETRIC: tl.constexpr):
    """fp32 scale and int32 zero point of group(s) `grp` for columns `offs_n`
    (grp a scalar with 1-D offs_n, or (BLOCK_K, 1) with (1, BLOCK_N))."""
    scale = tl.load(s_ptr + grp * stride_s + offs_n, mask=mask, other=0.0).to(tl.float32)
    if SYMMETRIC:
        zero = tl.full(scale.shape, 1 << (P0 + P1 - 1), tl.int32)
    else:
        # zero points are packed along N: the packed index is the column, the group the row
        zero = unpack_plane(z_ptr, 0, grp * stride_z, 1, offs_n, 0, mask, P0)
        if P1 > 0:
            zero |= unpack_plane(z_ptr, 0, grp * stride_z + z_plane1, 1, offs_n, 0, mask,
                                 P1) << P0
    return scale, zero


@triton.jit
def dequant_tile(qw_ptr, s_ptr, z_ptr, k0, offs_k, offs_n, K, N,
                 stride_qw, stride_s, stride_z, qw_plane1, z_plane1,
                 G: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr,
                 SYMMETRIC: tl.constexpr, BLOCK_K: tl.constexpr):
    """The dequantized (BLOCK_K, BLOCK_N) fp32 tile of W^T at rows offs_k = k0 + arange
    and columns offs_n; zero outside K and N."""
    k_mask = offs_k < K
    n_mask = offs_n < N
    mask = k_mask[:, None] & n_mask[None, :]
    codes = unpack_plane(qw_ptr, 0, 0, stride_qw, offs_k[:, None], offs_n[None, :], mask, P0)
    if P1 > 0:
        codes |= unpack_plane(qw_ptr, qw_plane1, 0, stride_qw, offs_k[:, None], offs_n[None, :],
                              mask, P1) << P0
    if G % BLOCK_K == 0:
        # the tile lies inside one group: one row of scales and zero points
        scale, zero = group_params(s_ptr, z_ptr, stride_s, stride_z, z_plane1, k0 // G, offs_n,
                                   n_mask, P0, P1, SYMMETRIC)
        w = (codes - zero[None, :]).to(tl.float32) * scale[None, :]
    else:
        scale, zero = group_params(s_ptr, z_ptr, stride_s, stride_z, z_plane1,
                                   (offs_k // G)[:, None], offs_n[None, :], mask, P0, P1,
                                   SYMMETRIC)
        w = (codes - zero).to(tl.float32) * scale
    return w
