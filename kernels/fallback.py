"""The torch path of the weight-only matmul: dequantize the packed weight, then multiply.

Computes exactly the function of the Triton kernels, y = x @ dequant(Wq)^T (+ bias),
for any device and float dtype. Used on the CPU, and on CUDA for activations the
kernels do not take (fp32). Half-precision inputs on the CPU are multiplied in fp32
and the result cast back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.packed_weight import check_packed, dequantize_packed


def fallback_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                    zeros: torch.Tensor, bias: torch.Tensor | None, bits: int, group_size: int,
                    in_features: int, symmetric: bool) -> torch.Tensor:
    """x: (M, K) float; packed operands as in `kernels.packed_weight`; bias: (N,) or None.
    Returns (M, N) in x's dtype."""
    check_activations(x, in_features, scales.shape[1], bias)
    check_packed(qweight, scales, zeros, bits, group_size, in_features, symmetric)
    compute = torch.float32 if x.device.type == "cpu" and x.dtype != torch.float64 else x.dtype
    w = dequantize_packed(qweight, scales, zeros, bits, group_size, in_features, symmetric)
    b = None if bias is None else bias.to(compute)
    return F.linear(x.to(compute), w.to(compute), b).to(x.dtype)


def check_activations(x: torch.Tensor, in_features: int, out_features: int,
                      bias: torch.Tensor | None) -> None:
    """Raise ValueError unless x is (M, K) floating point and bias is (N,) or None."""
    if x.dim() != 2 or not x.dtype.is_floating_point:
        raise ValueError(f"x must be a 2-D floating-point tensor (M, K), got {x.dtype} "
                         f"{tuple(x.shape)}")
    if x.shape[1] != in_features:
        raise ValueError(f"x has {x.shape[1]} features, the weight expects {in_features}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_features):
        raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
    if bias is not None and bias.device != x.device:
        raise ValueError(f"bias is on {bias.device}, x on {x.device}")
