"""Losses whose Hessian the estimators measure (DESIGN §3)."""

import torch
import torch.nn.functional as F


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with labels."""
    return F.cross_entropy(logits, labels)


def distillation_kl(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_fp ‖ p_q) against the full-precision model's logits; zero residual at
    the full-precision point, so its Hessian there is the Gauss–Newton matrix."""
    return F.kl_div(
        F.log_softmax(logits, -1), F.log_softmax(target_logits, -1),
        log_target=True, reduction="batchmean",
    )


def distillation_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared distance to the full-precision outputs, summed per sample, mean over
    the batch (embeddings and hidden states)."""
    return (output - target).pow(2).flatten(1).sum(1).mean()
