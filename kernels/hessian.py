"""The second moment of a layer's inputs, XᵀX, the one statistic GPTQ and AdaQuant
need from calibration data (‖XWᵀ − XŴᵀ‖² = tr(ΔW XᵀX ΔWᵀ)).

X has one row per position the weight is applied at, in the weight's (out, K) view
(`kernels.layout.quantizer_view`, `kernels.quantizer.as_matrix`): a token for a
linear layer or transformers' Conv1D, an im2col patch for a convolution, whose
K = in·kh·kw columns are ordered like the flattened weight. Only XᵀX (K×K), the
column sums and the row count are kept, never X, so memory per layer is bounded by
K² whatever the calibration size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels.layout import is_linear_like


@dataclass
class LayerHessian:
    """Σ xxᵀ (float32, K×K), Σ x (float64, K) and the number of rows seen."""

    xtx: torch.Tensor
    total: torch.Tensor
    rows: int = 0

    @classmethod
    def empty(cls, k: int, device: torch.device | str | None = None) -> LayerHessian:
        return cls(torch.zeros(k, k, device=device), torch.zeros(k, dtype=torch.float64, device=device))

    @property
    def k(self) -> int:
        return self.xtx.shape[0]

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        """Accumulate rows of X ((rows, K), any float dtype)."""
        if x.dim() != 2 or x.shape[1] != self.k:
            raise ValueError(f"input rows must be (rows, {self.k}), got {tuple(x.shape)}")
        x = x.detach().to(self.xtx.device, torch.float32)
        self.xtx.addmm_(x.T, x)
        self.total += x.sum(0, dtype=torch.float64)
        self.rows += x.shape[0]

    def gptq_matrix(self) -> torch.Tensor:
        """H = 2XᵀX / n in float64 (GPTQ's Hessian of the layer-output error)."""
        if self.rows == 0:
            raise ValueError("no calibration rows")
        return self.xtx.double() * (2.0 / self.rows)

    def mean(self) -> torch.Tensor:
        """The mean input row (float64, K)."""
        return self.total / max(self.rows, 1)

    def rank(self, rtol: float = 1e-7) -> int:
        """Numerical rank of XᵀX (eigenvalues above `rtol` × the largest)."""
        eig = torch.linalg.eigvalsh(self.xtx.double())
        return int((eig > rtol * eig.max().clamp_min(1e-300)).sum())


def supports(module: nn.Module) -> bool:
    """Layers whose output is X Wᵀ over rows of their input: linear layers (Linear,
    Conv1D) and ungrouped Conv1d / Conv2d. Embeddings are lookups (no X) and grouped
    convolutions apply a different X to each group of outputs: those stay on RTN."""
    if is_linear_like(module):
        return True
    return isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows of X the module's weight multiplies, (rows, K), from its input `x`."""
    if is_linear_like(module):
        return x.reshape(-1, x.shape[-1])
    if not supports(module):
        raise ValueError(f"{type(module).__name__} (groups={getattr(module, 'groups', None)}) has "
                         "no input matrix")
    one_d = isinstance(module, nn.Conv1d)
    if x.dim() == (2 if one_d else 3):  # an unbatched input
        x = x.unsqueeze(0)
    if one_d:  # a 1-D convolution is a 2-D one of height 1
        x = x.unsqueeze(-2)
    pad = module._reversed_padding_repeated_twice  # (left, right[, top, bottom]), any padding form
    if any(pad):
        pad = (*pad, 0, 0) if one_d else pad
        x = F.pad(x, pad, mode="constant" if module.padding_mode == "zeros" else module.padding_mode)
    kernel, dilation, stride = (tuple(getattr(module, a)) for a in ("kernel_size", "dilation", "stride"))
    if one_d:
        kernel, dilation, stride = (1, *kernel), (1, *dilation), (1, *stride)
    cols = F.unfold(x, kernel, dilation=dilation, stride=stride)  # (B, C·kh·kw, L)
    k = module.in_channels * math.prod(module.kernel_size)
    return cols.transpose(1, 2).reshape(-1, k)
