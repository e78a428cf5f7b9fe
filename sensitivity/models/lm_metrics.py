"""A causal LM's quality metrics from its logits: perplexity over the real next tokens,
mean KL to a full-precision reference and top-1 agreement with it. One owner for the
whole-model evaluation (`sensitivity.models.causal_lm`) and the block-streamed one
(`sensitivity.streaming.evaluate`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from sensitivity.bundle import Batch


def predicted(batch: Batch) -> torch.Tensor:
    """(B, T-1) 0/1: positions t whose next token is a real token."""
    mask = batch["attention_mask"]
    return mask[:, :-1] * mask[:, 1:]


def next_token_nll(logp: torch.Tensor, batch: Batch) -> tuple[float, int]:
    """(Σ −log p(next token), number of predicted tokens) over the real positions, from
    next-token log-probabilities (B, T, V)."""
    nll = -logp[:, :-1].gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    keep = predicted(batch).double()
    return float((nll.double() * keep).sum()), int(keep.sum())


def reference_of(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The full-precision reference of one batch: next-token log-probabilities in fp16
    (the full-precision model's own KL to them is ~1e-6) and the exact top-1 tokens."""
    logits = logits.float()
    return F.log_softmax(logits, -1).half(), logits.argmax(-1)


def lm_quality(batches: Sequence[Batch], logits: Iterable[torch.Tensor],
               references: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Perplexity, mean KL to the reference and top-1 agreement (%) of a model's logits
    on `batches` (one tensor per batch), over their real tokens."""
    nll = kl = agree = 0.0
    predicted = real = 0
    for b, z, (ref, ref_top) in zip(batches, logits, references):
        logp = F.log_softmax(z.float(), -1)
        s, n = next_token_nll(logp, b)
        nll, predicted = nll + s, predicted + n
        mask = b["attention_mask"].bool()
        ref_logp = ref.float()
        per = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
        kl += float(per[mask].double().sum())
        agree += float((logp.argmax(-1) == ref_top)[mask].sum())
        real += int(mask.sum())
    return {"perplexity": math.exp(nll / max(predicted, 1)), "kl_to_fp": kl / max(real, 1),
            "top1_agreement": 100 * agree / max(real, 1)}
