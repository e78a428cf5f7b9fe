"""The packed form of one quantized weight, as the kernels and the artifact store it.

For a weight viewed as a matrix W (N = rows = dim 0, K = the other dims flattened),
quantized in groups of g along K (`kernels.quantizer`), with G = ceil(K / g) groups:

* qweight: (ceil(K / 32) * 32 * b / 32, N) int32, codes packed along K (`kernels.packing`);
* scales:  (G, N) fp16;
* zeros:   (G, ceil(N / 32) * 32 * b / 32) int32, zero points packed along N the same way
           (plane rows of `packing` become plane column blocks here); (G, 0) when the
           quantizer is symmetric (the zero point is then 2^(b-1) and nothing is stored).

W[n, k] = (code[k, n] - zero[k // g, n]) * scale[k // g, n]. K and N are padded with
zero codes inside the packed words only; scales are never padded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.packing import pack_codes, packed_rows, select_codes, unpack_codes
from kernels.quantizer import QuantizedWeight, quantize
from kernels.scheme import QuantConfig, num_groups


@dataclass(frozen=True)
class PackedWeight:
    """A packed quantized weight; `shape` is the original weight's shape."""

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    shape: tuple[int, ...]
    config: QuantConfig

    def __post_init__(self):
        check_packed(self.qweight, self.scales, self.zeros, self.config.bits,
                     self.group_size, self.in_features, self.config.symmetric)

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return math.prod(self.shape[1:])

    @property
    def group_size(self) -> int:
        """Effective group size along K (K itself when K < the configured group size)."""
        return self.config.group_size_for(self.in_features)

    @classmethod
    def from_quantized(cls, q: QuantizedWeight) -> PackedWeight:
        bits = q.config.bits
        zeros = (q.zeros.new_zeros(q.scales.shape[1], 0, dtype=torch.int32) if q.config.symmetric
                 else pack_codes(q.zeros, bits).T.contiguous())
        return cls(
            qweight=pack_codes(q.codes.T, bits),
            scales=q.scales.T.contiguous(),
            zeros=zeros,
            shape=q.shape,
            config=q.config,
        )

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dequantized weight in its original shape; equal to
        `QuantizedWeight.dequantize` of the weight it was packed from."""
        w = dequantize_packed(self.qweight, self.scales, self.zeros, self.config.bits,
                              self.group_size, self.in_features, self.config.symmetric)
        return w.reshape(self.shape).to(dtype)

    def select_rows(self, rows: torch.Tensor) -> PackedWeight:
        """The packed weight of rows `rows` (1-D indices along dim 0, e.g. embedding ids)."""
        rows = rows.to(device=self.qweight.device, dtype=torch.int64)
        bits = self.config.bits
        zeros = (self.zeros[:, :0] if self.config.symmetric else pack_codes(
            select_codes(self.zeros.T, bits, self.out_features, rows), bits).T.contiguous())
        return PackedWeight(self.qweight[:, rows].contiguous(), self.scales[:, rows].contiguous(),
                            zeros, (rows.numel(), *self.shape[1:]), self.config)

    def to(self, device: torch.device | str) -> PackedWeight:
        return PackedWeight(self.qweight.to(device), self.scales.to(device),
                            self.zeros.to(device), self.shape, self.config)


def pack_weight(weight: torch.Tensor, config: QuantConfig) -> PackedWeight:
    """Quantize `weight` with `kernels.quantizer.quantize` and pack it."""
    return PackedWeight.from_quantized(quantize(weight, config))


def symmetric_zero(bits: int) -> int:
    """The implicit zero point of the symmetric quantizer."""
    return 1 << (bits - 1)


def dequantize_packed(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                      bits: int, group_size: int, in_features: int,
                      symmetric: bool) -> torch.Tensor:
    """(N, K) fp32 weight from packed operands (the CPU path of every kernel); the same
    arithmetic as `QuantizedWeight.dequantize`, so the two agree bit for bit."""
    k, g = in_features, group_size
    groups, n = scales.shape
    codes = unpack_codes(qweight, bits, k).float()  # (K, N)
    if groups * g != k:
        codes = F.pad(codes, (0, 0, 0, groups * g - k))
    codes = codes.view(groups, g, n)
    if symmetric:
        zero = torch.full((groups, 1, n), float(symmetric_zero(bits)), device=codes.device)
    else:
        zero = unpack_codes(zeros.T.contiguous(), bits, n).float().T[:, None, :]
    w = (codes - zero) * scales.float()[:, None, :]
    return w.view(groups * g, n)[:k].T


def check_packed(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
                 group_size: int, in_features: int, symmetric: bool) -> None:
    """Raise ValueError unless the packed operands are consistent with each other."""
    if in_features < 1 or group_size < 1:
        raise ValueError(f"in_features and group_size must be >= 1, got {in_features}, "
                         f"{group_size}")
    if group_size > in_features:
        raise ValueError(f"group_size {group_size} exceeds in_features {in_features}; "
                         "use the effective group size min(g, K)")
    if qweight.dtype != torch.int32 or qweight.dim() != 2:
        raise ValueError(f"qweight must be 2-D int32, got {qweight.dtype} {tuple(qweight.shape)}")
    if not scales.dtype.is_floating_point or scales.dim() != 2:
        raise ValueError(f"scales must be 2-D floating point, got {scales.dtype} "
                         f"{tuple(scales.shape)}")
    if zeros.dtype != torch.int32 or zeros.dim() != 2:
        raise ValueError(f"zeros must be 2-D int32, got {zeros.dtype} {tuple(zeros.shape)}")
    groups, n = scales.shape
    expected_groups = num_groups(in_features, QuantConfig(bits, group_size))
    if groups != expected_groups:
        raise ValueError(f"scales have {groups} groups; K={in_features} in groups of "
                         f"{group_size} needs {expected_groups}")
    if tuple(qweight.shape) != (packed_rows(in_features, bits), n):
        raise ValueError(f"qweight shape {tuple(qweight.shape)} does not match K={in_features}, "
                         f"N={n} at {bits} bits: expected ({packed_rows(in_features, bits)}, {n})")
    zero_cols = 0 if symmetric else packed_rows(n, bits)
    if tuple(zeros.shape) != (groups, zero_cols):
        raise ValueError(f"zeros shape {tuple(zeros.shape)}: expected ({groups}, {zero_cols})")
    devices = {qweight.device, scales.device, zeros.device}
    if len(devices) != 1:
        raise ValueError(f"packed operands are on different devices: {sorted(map(str, devices))}")
