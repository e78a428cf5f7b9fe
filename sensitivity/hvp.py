"""Hessian-vector products restricted to layer blocks, reusing one graph.

`LossGraph` takes the gradient of the calibration loss once with `create_graph`
(via `torch.autograd.grad`, not `backward(create_graph=True)`, which leaks through
a reference cycle) and then answers H_ll·v for any layer and probe from that graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sensitivity.bundle import Batch, ModelBundle


class LossGraph:
    """The loss of one calibration batch and its gradient w.r.t. the given weights."""

    def __init__(self, bundle: ModelBundle, weights: Sequence[nn.Parameter], batch: Batch):
        self.weights = list(weights)
        self.loss = bundle.loss(bundle.model, batch)
        self.grads = torch.autograd.grad(self.loss, self.weights, create_graph=True)

    def block_hvp(self, i: int, v: torch.Tensor) -> torch.Tensor:
        """H_ii·v for weight i (the diagonal block of the Hessian)."""
        (hv,) = torch.autograd.grad(self.grads[i], self.weights[i], grad_outputs=v,
                                    retain_graph=True)
        return hv

    def hvp(self, vs: Sequence[torch.Tensor | None], targets: Sequence[int]) -> list[torch.Tensor]:
        """(H·v)_t for t in targets, v given per weight (None = zero block)."""
        pairs = [(g, v) for g, v in zip(self.grads, vs) if v is not None]
        out = torch.autograd.grad([g for g, _ in pairs], [self.weights[t] for t in targets],
                                  grad_outputs=[v for _, v in pairs], retain_graph=True,
                                  allow_unused=True)
        return [torch.zeros_like(self.weights[t]) if h is None else h for h, t in zip(out, targets)]


def rademacher(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, like.shape, generator=generator, dtype=like.dtype) * 2 - 1


def layer_weights(model: nn.Module, names: Sequence[str]) -> list[nn.Parameter]:
    modules = dict(model.named_modules())
    return [modules[n].weight for n in names]
