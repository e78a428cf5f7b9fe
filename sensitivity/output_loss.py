"""Losses on model outputs that know their own output-space Hessian H_out.

The Gauss–Newton / Fisher estimators need more than a scalar loss: they draw
probes u with E[u uᵀ] = H_out (the Hessian of the loss w.r.t. the model outputs),
so that ‖J_lᵀ u‖² is an unbiased sample of Tr(J_lᵀ H_out J_l), and they evaluate
the quadratic form (J v)ᵀ H_out (J v) for forward-mode samples. Each loss also
says where layer-wise relevance propagation starts (`relevance`).

Reductions follow `sensitivity.losses`: mean over the batch (dim 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sensitivity.losses import distillation_kl, distillation_mse, task_loss


def _rademacher(shape: tuple[int, ...], like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(like.dtype)


def _softmax_factor_probes(logits: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k probes u with E[u uᵀ] = (diag(p) − p pᵀ)/B per sample, from the exact
    factor A = diag(√p) − p √pᵀ (A Aᵀ = diag(p) − p pᵀ because Σp = 1)."""
    p = F.softmax(logits.detach().double(), -1)
    r = _rademacher((k, *logits.shape), p, gen)
    sp = p.sqrt()
    u = sp * r - p * (sp * r).sum(-1, keepdim=True)
    return (u / math.sqrt(logits.shape[0])).to(logits.dtype)


def _softmax_quadratic(logits: torch.Tensor, jv: torch.Tensor) -> torch.Tensor:
    """(jv)ᵀ H_out (jv) per probe (leading dim of jv) for softmax cross-entropy."""
    p = F.softmax(logits.detach().double(), -1)
    jv = jv.double()
    per = (p * jv.pow(2)).sum(-1) - (p * jv).sum(-1).pow(2)
    return per.flatten(1).sum(1) / logits.shape[0]


@dataclass(frozen=True)
class CrossEntropyOutput:
    """Task cross-entropy of logits (B, C) against `batch[label_key]`; H_out per
    sample is (diag(p) − p pᵀ)/B. Not zero-residual: its Gauss–Newton matrix is the
    Fisher approximation of the Hessian."""

    label_key: str = "y"
    zero_residual: bool = False

    def __call__(self, output: torch.Tensor, batch) -> torch.Tensor:
        return task_loss(output, batch[self.label_key])

    def probes(self, output: torch.Tensor, batch, k: int, gen: torch.Generator) -> torch.Tensor:
        return _softmax_factor_probes(output, k, gen)

    def quadratic(self, output: torch.Tensor, batch, jv: torch.Tensor) -> torch.Tensor:
        return _softmax_quadratic(output, jv)

    def relevance(self, output: torch.Tensor, batch) -> torch.Tensor:
        """LRP starts from the logit of the true class, summed over the batch."""
        return output.gather(-1, batch[self.label_key].unsqueeze(-1)).sum()


@dataclass(frozen=True)
class DistillationKLOutput:
    """KL(p_fp ‖ p) against full-precision logits `batch[target_key]`: zero residual
    at the full-precision point, H_out = (diag(p) − p pᵀ)/B there."""

    target_key: str = "target"
    zero_residual: bool = True

    def __call__(self, output: torch.Tensor, batch) -> torch.Tensor:
        return distillation_kl(output, batch[self.target_key])

    def probes(self, output: torch.Tensor, batch, k: int, gen: torch.Generator) -> torch.Tensor:
        return _softmax_factor_probes(output, k, gen)

    def quadratic(self, output: torch.Tensor, batch, jv: torch.Tensor) -> torch.Tensor:
        return _softmax_quadratic(output, jv)

    def relevance(self, output: torch.Tensor, batch) -> torch.Tensor:
        """The logit of the full-precision model's top class."""
        return output.gather(-1, batch[self.target_key].argmax(-1, keepdim=True)).sum()


@dataclass(frozen=True)
class SquaredErrorOutput:
    """Σ (output − target)² per sample, mean over the batch (`distillation_mse`):
    H_out = (2/B)·I. Zero residual when the target is the model's own
    full-precision output (self-distillation)."""

    target_key: str = "target"
    zero_residual: bool = True

    def __call__(self, output: torch.Tensor, batch) -> torch.Tensor:
        return distillation_mse(output, batch[self.target_key])

    def probes(self, output: torch.Tensor, batch, k: int, gen: torch.Generator) -> torch.Tensor:
        scale = math.sqrt(2.0 / output.shape[0])
        return _rademacher((k, *output.shape), output, gen) * scale

    def quadratic(self, output: torch.Tensor, batch, jv: torch.Tensor) -> torch.Tensor:
        return 2.0 / output.shape[0] * jv.double().pow(2).flatten(1).sum(1)

    def relevance(self, output: torch.Tensor, batch) -> torch.Tensor:
        """Dot product of the output with the full-precision output."""
        return (output * batch[self.target_key].to(output.dtype)).sum()
