"""Host-side pieces shared by the Triton launchers: operand checks, the plane metadata
the kernels take, and whether kernels defined now run in the Triton interpreter."""

from __future__ import annotations

from typing import NamedTuple

import torch
from triton import knobs

from kernels.fallback import check_activations
from kernels.packed_weight import check_packed
from kernels.packing import plane_offsets, planes

ACTIVATION_DTYPES = (torch.float16, torch.bfloat16)


class PlaneMeta(NamedTuple):
    """Bit planes of a width and where the high plane starts in qweight (row) and in
    zeros (column); P1 = 0 when the width is a power of two."""

    p0: int
    p1: int
    qw_plane1: int
    z_plane1: int


def plane_meta(bits: int, in_features: int, out_features: int) -> PlaneMeta:
    widths = planes(bits)
    qw_offsets = plane_offsets(in_features, bits)
    z_offsets = plane_offsets(out_features, bits)
    if len(widths) == 1:
        return PlaneMeta(widths[0], 0, 0, 0)
    return PlaneMeta(widths[0], widths[1], qw_offsets[1], z_offsets[1])


def interpreting() -> bool:
    """True when kernels decorated now run in the Triton interpreter (TRITON_INTERPRET=1)."""
    return bool(knobs.runtime.interpret)


def check_triton_operands(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                          zeros: torch.Tensor, bias: torch.Tensor | None, bits: int,
                          group_size: int, in_features: int, symmetric: bool,
                          interpreted: bool) -> None:
    """Raise ValueError unless the operands can go to a Triton launcher: x (M, K) fp16 or
    bf16, contiguous, on the packed weight's device, which is CUDA unless the kernel runs
    in the interpreter."""
    check_activations(x, in_features, scales.shape[1], bias)
    check_packed(qweight, scales, zeros, bits, group_size, in_features, symmetric)
    if x.dtype not in ACTIVATION_DTYPES:
        raise ValueError(f"the Triton kernels take fp16 or bf16 activations, got {x.dtype}")
    if x.device != qweight.device:
        raise ValueError(f"x is on {x.device}, the packed weight on {qweight.device}")
    if x.device.type != "cuda" and not interpreted:
        raise ValueError("the Triton kernels need CUDA tensors (or kernels defined under "
                         "TRITON_INTERPRET=1)")
    tensors = {"x": x, "qweight": qweight, "scales": scales, "zeros": zeros}
    if bias is not None:
        tensors["bias"] = bias
    for name, t in tensors.items():
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
