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


# --- next-token losses of causal language models ------------------------------------
#
# Logits are (B, T, V); `batch["attention_mask"]` (B, T) marks the real tokens. The
# loss is the mean over the positions that count (N of them in the batch), so the
# output Hessian of each such position is (diag(p) − p pᵀ)/N; padded positions
# have none. Probes are drawn one at a time in float64 and kept in the logits' dtype:
# k probes of a vocabulary-wide output are the biggest tensors a Gauss–Newton probe
# builds.


PROBE_ROWS = 16  # positions per slice in `_token_probes`


def _token_probes(logits: torch.Tensor, weight: torch.Tensor, k: int,
                  gen: torch.Generator) -> torch.Tensor:
    """k probes u with E[u uᵀ] = weight_t · (diag(p_t) − p_t p_tᵀ) at every position t.
    In the logits' dtype, one probe and PROBE_ROWS positions at a time: an LLM's
    (tokens × vocabulary) tensors are the large ones, and beside the k probes themselves
    the softmax, its square root and the signs of whole ones set the peak memory (75 MB
    of smollm2-135m's at the top of a fisher shard). Every position's values are its own
    (a row's softmax and sum do not depend on the other rows) and the signs are drawn
    in the same order, so the probes are those of whole-tensor temporaries."""
    rows = logits.detach().reshape(-1, logits.shape[-1])
    scales = weight.reshape(-1).sqrt().unsqueeze(-1).to(logits.dtype)
    out = torch.empty((k, *logits.shape), dtype=logits.dtype)
    flat = out.view(k, *rows.shape)
    n = rows.shape[0]
    starts = list(range(0, n, PROBE_ROWS))
    if len(starts) > 1 and n - starts[-1] == 1:  # no one-row slice (its sum may split over threads)
        starts.pop()
    bounds = list(zip(starts, [*starts[1:], n]))
    r = torch.empty((min(n, 2 * PROBE_ROWS), rows.shape[1]), dtype=logits.dtype)
    for j in range(k):
        for lo, hi in bounds:
            p = F.softmax(rows[lo:hi].float(), -1).to(logits.dtype)
            rj, o = r[:hi - lo], flat[j, lo:hi]
            rj.random_(0, 2, generator=gen).mul_(2).sub_(1)  # Rademacher signs
            rj.mul_(p.sqrt())
            torch.mul(p, rj.sum(-1, keepdim=True), out=o)
            torch.sub(rj, o, out=o)
            o.mul_(scales[lo:hi])
    return out


def _token_quadratic(logits: torch.Tensor, weight: torch.Tensor, jv: torch.Tensor) -> torch.Tensor:
    """Σ_t weight_t · (jv_t)ᵀ (diag(p_t) − p_t p_tᵀ) (jv_t), per probe (leading dim of jv)."""
    p = F.softmax(logits.detach().double(), -1)
    out = torch.zeros(jv.shape[0], dtype=torch.float64)
    for j in range(jv.shape[0]):
        v = jv[j].double()
        per = (p * v.pow(2)).sum(-1) - (p * v).sum(-1).pow(2)
        out[j] = (per * weight.double()).sum()
    return out


def _position_weights(mask: torch.Tensor) -> torch.Tensor:
    """1/N at each of the N positions that count, 0 elsewhere."""
    mask = mask.to(torch.float64)
    return mask / mask.sum().clamp_min(1.0)


def next_token_positions(batch) -> torch.Tensor:
    """(B, T) 0/1: positions t whose next token t+1 is a real token with a label
    (`labels` at t+1 not −100, the Hugging Face convention), the last position none."""
    mask = batch["attention_mask"]
    valid = torch.zeros_like(mask)
    valid[:, :-1] = mask[:, :-1] * mask[:, 1:] * (batch["labels"][:, 1:] != -100).to(mask.dtype)
    return valid


@dataclass(frozen=True)
class TokenDistillationKLOutput:
    """Per-token self-distillation: mean over real tokens of KL(p_fp ‖ p) against the
    full-precision logits `batch[target_key]` (B, T, V). Zero residual at the
    full-precision point, where H_out per token is (diag(p) − p pᵀ)/N."""

    target_key: str = "target"
    zero_residual: bool = True

    def __call__(self, output: torch.Tensor, batch) -> torch.Tensor:
        kl = F.kl_div(F.log_softmax(output, -1), F.log_softmax(batch[self.target_key].to(output.dtype), -1),
                      log_target=True, reduction="none").sum(-1)
        mask = batch["attention_mask"].to(output.dtype)
        return (kl * mask).sum() / mask.sum().clamp_min(1.0)

    def probes(self, output: torch.Tensor, batch, k: int, gen: torch.Generator) -> torch.Tensor:
        return _token_probes(output, _position_weights(batch["attention_mask"]), k, gen)

    def quadratic(self, output: torch.Tensor, batch, jv: torch.Tensor) -> torch.Tensor:
        return _token_quadratic(output, _position_weights(batch["attention_mask"]), jv)

    def relevance(self, output: torch.Tensor, batch) -> torch.Tensor:
        """The logit of the full-precision model's top token, summed over real tokens."""
        top = batch[self.target_key].argmax(-1, keepdim=True)
        return (output.gather(-1, top).squeeze(-1) * batch["attention_mask"].to(output.dtype)).sum()


@dataclass(frozen=True)
class NextTokenCrossEntropyOutput:
    """The language-modelling task loss: mean cross-entropy of the logits at t against
    the token at t+1 (`batch["labels"]`, aligned with the inputs, −100 ignored), over
    the positions `next_token_positions` keeps. H_out per position (diag(p) − p pᵀ)/N:
    its Gauss–Newton matrix is the Fisher approximation (not zero-residual)."""

    zero_residual: bool = False

    def __call__(self, output: torch.Tensor, batch) -> torch.Tensor:
        valid = next_token_positions(batch)
        target = batch["labels"][:, 1:].clamp_min(0)
        nll = F.cross_entropy(output[:, :-1].transpose(1, 2), target, reduction="none")
        weight = valid[:, :-1].to(output.dtype)
        return (nll * weight).sum() / weight.sum().clamp_min(1.0)

    def probes(self, output: torch.Tensor, batch, k: int, gen: torch.Generator) -> torch.Tensor:
        return _token_probes(output, _position_weights(next_token_positions(batch)), k, gen)

    def quadratic(self, output: torch.Tensor, batch, jv: torch.Tensor) -> torch.Tensor:
        return _token_quadratic(output, _position_weights(next_token_positions(batch)), jv)

    def relevance(self, output: torch.Tensor, batch) -> torch.Tensor:
        """The logit of the true next token, summed over the positions that have one."""
        target = torch.zeros_like(batch["labels"])
        target[:, :-1] = batch["labels"][:, 1:].clamp_min(0)
        picked = output.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        return (picked * next_token_positions(batch).to(output.dtype)).sum()
