"""The integer path of a packed linear layer whose input is quantized (W8A8, and any pair
of widths both at most 8 bits): int8 × int8 → int32 matmuls, then one float rescale.

What the packed artifact expresses, and so what this computes:

* weight: b ≤ 8-bit codes per group of g along K (`kernels.packed_weight`), one fp16 scale
  per (group, output channel); symmetric (zero point 2^(b−1), implicit) or asymmetric
  (a zero point per group and channel). g = K is per output channel.
* input: `kernels.activation.ActivationQuantizer` at a ≤ 8 bits: static (one scale and
  zero point per tensor) or dynamic (one per token, i.e. per row of the (M, K) input);
  symmetric (zero 0) or asymmetric.

Both operands are brought into int8 by an offset: asymmetric codes c ∈ [0, 2^b − 1] become
c' = c − 2^(b−1) with zero point z' = z − 2^(b−1) (so c − z = c' − z'); symmetric input
codes are int8 already (zero 0), symmetric weight codes minus their implicit zero point are
too. Per group g of K:

    acc_g = Σ_k (a'_k − z'_a)(w'_k − z'_w) = A'_g W'_g − z'_a·colsum(W'_g) − rowsum(A'_g)·z'_w
            + |g|·z'_a·z'_w

with A'_g W'_g one int8 × int8 → int32 matmul (`torch._int_mm`; exact while
|g|·128·128 < 2^31) and the corrections (only those whose zero points are not 0) in int64;
then y = s_a · Σ_g s_w,g · acc_g (+ bias) in fp32. This equals the fake-quantized float
computation, F.linear(s_a(c_a − z_a), s_w(c_w − z_w)), exactly in the integer accumulate
and within float rounding after the rescale (the tests check both).

On CUDA with Triton, groups of 32 to 32768 go to one fused kernel instead
(`kernels.triton_w8a8`: every group's int8 tl.dot, the corrections and the scales in one
launch). Otherwise `torch._int_mm`: on the CPU for any shape (torch ≥ 2.2), on CUDA for
M > 16 and K, N multiples of 8 (`int_matmul` pads with zero rows and columns there, which
leaves the product unchanged); elsewhere an int64 matmul (exact, slow).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec

import torch
import torch.nn.functional as F

from kernels.activation import ActivationQuantizer
from kernels.packed_weight import PackedWeight, symmetric_zero
from kernels.packing import unpack_codes

HAS_TRITON = find_spec("triton") is not None
MAX_BITS = 8  # widths whose codes fit int8 after the offset
_INT32_SAFE = (1 << 31) // (128 * 128)  # the longest group whose int8 products sum in int32


def supports_integer_path(weight_bits: int, quantizer: ActivationQuantizer | None) -> bool:
    """Whether a packed layer at `weight_bits` with this input quantizer computes in
    integers: both widths at most 8 bits."""
    return quantizer is not None and weight_bits <= MAX_BITS and quantizer.bits <= MAX_BITS


def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(M, K) int8 @ (K, N) int8 -> (M, N) int32, exactly."""
    if a.dtype != torch.int8 or b.dtype != torch.int8 or a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"int_matmul takes 2-D int8 operands, got {a.dtype} {tuple(a.shape)} "
                         f"and {b.dtype} {tuple(b.shape)}")
    m, k = a.shape
    n = b.shape[1]
    if b.shape[0] != k:
        raise ValueError(f"inner dimensions differ: {tuple(a.shape)} @ {tuple(b.shape)}")
    if m == 0 or n == 0 or k == 0:
        return torch.zeros(m, n, dtype=torch.int32, device=a.device)
    if a.device.type == "cuda":
        # cuBLASLt's int8 GEMM: M > 16, K and N multiples of 8; zero padding is exact
        # zero padding is exact; the (K, N) operand stays column-major (a transposed (N, K)
        # row-major tensor), the layout cuBLASLt's int8 kernels take
        pm, pk, pn = max(0, 17 - m), -k % 8, -n % 8
        if pm or pk:
            a = F.pad(a, (0, pk, 0, pm))
        b = F.pad(b.t(), (0, pk, 0, pn)).t() if pk or pn else b.t().contiguous().t()
        return torch._int_mm(a.contiguous(), b)[:m, :n]
    if a.device.type == "cpu":
        return torch._int_mm(a.contiguous(), b)
    return (a.long() @ b.long()).to(torch.int32)


@dataclass(frozen=True)
class IntWeight:
    """A packed weight as int8 operands: `codes` (N, K) int8 = c − 2^(b−1) (so that for
    symmetric weights they are the signed values themselves), `zeros` (G, N) int64 = z −
    2^(b−1) or None (symmetric), `colsums` (G, N) int64 Σ over each group of `codes`,
    `scales` (G, N) fp32."""

    codes: torch.Tensor
    zeros: torch.Tensor | None
    colsums: torch.Tensor
    scales: torch.Tensor
    group_size: int
    in_features: int

    @property
    def groups(self) -> list[tuple[int, int]]:
        """[start, end) of each group along K (the last one may be partial)."""
        return _groups(self.in_features, self.group_size)

    @classmethod
    def from_packed(cls, packed: PackedWeight) -> IntWeight:
        bits = packed.config.bits
        if bits > MAX_BITS:
            raise ValueError(f"{bits}-bit weights do not fit int8; the integer path takes "
                             f"at most {MAX_BITS} bits")
        if len(packed.shape) != 2:
            raise ValueError(f"the integer path serves linear layers, not a {packed.shape} weight")
        k, g, offset = packed.in_features, packed.group_size, symmetric_zero(bits)
        codes = (unpack_codes(packed.qweight, bits, k).to(torch.int16) - offset).to(torch.int8)
        codes = codes.T.contiguous()  # (N, K): the (K, N) operand is its column-major view
        zeros = None
        if not packed.config.symmetric:
            n = packed.out_features
            zeros = unpack_codes(packed.zeros.T.contiguous(), bits, n).T.to(torch.int64) - offset
        colsums = torch.stack([codes[:, a:b].sum(dim=1, dtype=torch.int64)
                               for a, b in _groups(k, g)])
        return cls(codes, zeros, colsums, packed.scales.float(), g, k)


def _groups(k: int, g: int) -> list[tuple[int, int]]:
    return [(start, min(start + g, k)) for start in range(0, k, g)]


def quantize_input(x: torch.Tensor, quantizer: ActivationQuantizer):
    """(codes (M, K) int8, zero (M, 1) or (1, 1) int64 or None, scale (M, 1) or (1, 1) fp32):
    x ≈ scale · (codes − zero), the offsets as in the module docstring."""
    if quantizer.bits > MAX_BITS:
        raise ValueError(f"a {quantizer.bits}-bit input does not fit int8")
    codes, scale, zero = quantizer.quantize(x)
    scale = scale.float().reshape(-1, 1) if scale.dim() else scale.float().reshape(1, 1)
    if quantizer.symmetric:
        return codes.to(torch.int8), None, scale
    offset = symmetric_zero(quantizer.bits)
    zero = zero.reshape(-1, 1) if zero.dim() else zero.reshape(1, 1)
    return (codes - offset).to(torch.int8), zero.round().to(torch.int64) - offset, scale


def accumulators(codes: torch.Tensor, zero: torch.Tensor | None, weight: IntWeight) -> torch.Tensor:
    """acc (G, M, N) int64: Σ over each group of (a − z_a)(w − z_w), the integers the rescale
    multiplies (exact)."""
    if weight.group_size > _INT32_SAFE:
        raise ValueError(f"groups of {weight.group_size} inputs can overflow the int32 "
                         f"accumulator (at most {_INT32_SAFE})")
    out = []
    for i, (a, b) in enumerate(weight.groups):
        block = codes[:, a:b]
        acc = int_matmul(block, weight.codes[:, a:b].T).to(torch.int64)  # (M, N)
        if zero is not None:
            acc -= zero * weight.colsums[i][None, :]
        if weight.zeros is not None:
            acc -= block.sum(dim=1, dtype=torch.int64)[:, None] * weight.zeros[i][None, :]
            if zero is not None:
                acc += (b - a) * zero * weight.zeros[i][None, :]
        out.append(acc)
    return torch.stack(out)


def int8_linear(x: torch.Tensor, quantizer: ActivationQuantizer, weight: IntWeight,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """y (M, N) = Q_a(x) (M, K) @ dequant(W)^T + bias, computed in integers; x's dtype."""
    if x.dim() != 2 or x.shape[1] != weight.in_features:
        raise ValueError(f"x must be (M, {weight.in_features}), got {tuple(x.shape)}")
    if quantizer.dim not in (-1, 1):
        raise ValueError("the integer path quantizes linear inputs along their last dimension")
    codes, zero, scale = quantize_input(x, quantizer)
    if x.is_cuda and HAS_TRITON:
        from kernels.triton_w8a8 import supports, w8a8_forward

        if supports(weight.group_size):  # the fused kernel: every group in one launch
            y = w8a8_forward(codes, scale.reshape(-1), None if zero is None else zero.reshape(-1),
                             weight.codes, weight.scales, weight.zeros, weight.colsums, bias,
                             weight.group_size)
            return y.to(x.dtype)
    acc = accumulators(codes, zero, weight)
    if acc.shape[0] == 1:
        y = acc[0].float() * weight.scales[0][None, :]
    else:
        y = (acc.float() * weight.scales[:, None, :]).sum(dim=0)
    y = y * scale
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


__all__ = ["IntWeight", "MAX_BITS", "accumulators", "int8_linear", "int_matmul",
           "quantize_input", "supports_integer_path"]
