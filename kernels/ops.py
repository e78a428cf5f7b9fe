"""`torch.ops.bitalloc.wq_linear`: the weight-only quantized linear as a torch custom op,
with a fake (meta) implementation so `torch.compile` and CUDA graphs can trace it.

Dispatch: CUDA tensors with fp16/bf16 activations and Triton installed go to the Triton
kernels (GEMV for one row, tiled/split-K GEMM otherwise); everything else (the CPU, fp32
activations) goes to the torch path in `kernels.fallback`. Both compute the same function.
The modules call `linear_2d`, which skips the op on the torch path (see there).
"""

from __future__ import annotations

from importlib.util import find_spec

import torch

from kernels.fallback import fallback_linear
from kernels.packed_weight import PackedWeight

TRITON_DTYPES = (torch.float16, torch.bfloat16)
HAS_TRITON = find_spec("triton") is not None


def uses_triton(x: torch.Tensor) -> bool:
    """Whether `wq_linear` on activations like `x` runs the Triton kernels."""
    return HAS_TRITON and x.is_cuda and x.dtype in TRITON_DTYPES


@torch.library.custom_op("bitalloc::wq_linear", mutates_args=())
def wq_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
              bias: torch.Tensor | None, bits: int, group_size: int, in_features: int,
              symmetric: bool) -> torch.Tensor:
    """y (M, N) = x (M, K) @ dequant(qweight, scales, zeros)^T + bias, in x's dtype.
    `group_size` is the effective group size min(g, K); layout in `kernels.packed_weight`."""
    if uses_triton(x) and x.shape[0] > 0:
        if x.shape[0] == 1:
            from kernels.triton_gemv import gemv_forward

            return gemv_forward(x.contiguous(), qweight, scales, zeros, bias, bits, group_size,
                                in_features, symmetric)
        from kernels.triton_gemm import gemm_forward

        return gemm_forward(x.contiguous(), qweight, scales, zeros, bias, bits, group_size,
                            in_features, symmetric)
    return fallback_linear(x, qweight, scales, zeros, bias, bits, group_size, in_features,
                           symmetric)


@wq_linear.register_fake
def _(x, qweight, scales, zeros, bias, bits, group_size, in_features, symmetric):
    return x.new_empty(x.shape[0], scales.shape[1])


def linear_2d(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
              zeros: torch.Tensor, bias: torch.Tensor | None, bits: int, group_size: int,
              in_features: int, symmetric: bool) -> torch.Tensor:
    """`wq_linear`'s function, x (M, K) -> (M, N). Goes through the custom op where it runs
    Triton, and straight to the torch path otherwise: the same function, without the op's
    one-off import of torch._dynamo (seconds) in processes that never use a GPU."""
    op = wq_linear if uses_triton(x) else fallback_linear
    return op(x, qweight, scales, zeros, bias, bits, group_size, in_features, symmetric)


def quant_linear(x: torch.Tensor, weight: PackedWeight, bias: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """x (..., K) @ dequant(weight)^T + bias -> (..., N)."""
    if x.shape[-1] != weight.in_features:
        raise ValueError(f"x has {x.shape[-1]} features, the weight expects {weight.in_features}")
    y = linear_2d(x.reshape(-1, weight.in_features), weight.qweight, weight.scales, weight.zeros,
                  bias, weight.config.bits, weight.group_size, weight.in_features,
                  weight.config.symmetric)
    return y.reshape(*x.shape[:-1], weight.out_features)
