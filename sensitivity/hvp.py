"""Hessian-vector products restricted to layer blocks, reusing one graph.

`LossGraph` takes the gradient of one calibration batch's loss w.r.t. the layer
perturbations δ_l (see `sensitivity.perturb`) once with `create_graph` (via
`torch.autograd.grad`, not `backward(create_graph=True)`, which leaks through a
reference cycle) and then answers H_ll·v — one probe or a block of probes at once
(`is_grads_batched`) — and cross blocks (H·v)_t for any layer from that graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sensitivity.bundle import Batch
from sensitivity.perturb import Perturbation


class LossGraph:
    """The loss of one calibration batch and its gradient w.r.t. every δ_l.

    Build it inside `perturb.frozen(model)` so autograd tracks only the δ."""

    def __init__(self, pert: Perturbation, batch: Batch, only: Sequence[int] | None = None):
        idx = range(len(pert.names)) if only is None else only
        self.vars: list[torch.Tensor | None] = [None] * len(pert.names)
        for i in idx:
            self.vars[i] = pert.zeros(i).requires_grad_(True)
        self.loss = pert.loss(batch, self.vars)
        live = [i for i in idx]
        grads = torch.autograd.grad(self.loss, [self.vars[i] for i in live], create_graph=True,
                                    allow_unused=True)
        self.grads: list[torch.Tensor | None] = [None] * len(pert.names)
        for i, g in zip(live, grads):
            self.grads[i] = g

    def block_hvp(self, i: int, v: torch.Tensor, batched: bool = False) -> torch.Tensor:
        """H_ii·v for layer i; with `batched`, v has a leading probe dimension."""
        g = self.grads[i]
        if g is None or not g.requires_grad:  # the loss is at most linear in δ_i
            return torch.zeros_like(v)
        (hv,) = torch.autograd.grad(g, self.vars[i], grad_outputs=v, retain_graph=True,
                                    is_grads_batched=batched, allow_unused=True)
        return torch.zeros_like(v) if hv is None else hv

    def hvp(self, vs: Sequence[torch.Tensor | None], targets: Sequence[int]) -> list[torch.Tensor]:
        """(H·v)_t for t in targets, v given per layer (None = zero block)."""
        pairs = [(g, v) for g, v in zip(self.grads, vs)
                 if v is not None and g is not None and g.requires_grad]
        zeros = [torch.zeros_like(self.vars[t]) for t in targets]
        if not pairs:
            return zeros
        out = torch.autograd.grad([g for g, _ in pairs], [self.vars[t] for t in targets],
                                  grad_outputs=[v for _, v in pairs], retain_graph=True,
                                  allow_unused=True)
        return [z if h is None else h for h, z in zip(out, zeros)]


def rademacher(shape: Sequence[int], generator: torch.Generator,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.randint(0, 2, tuple(shape), generator=generator) * 2 - 1).to(dtype)


def layer_weights(model: nn.Module, names: Sequence[str]) -> list[nn.Parameter]:
    modules = dict(model.named_modules())
    return [modules[n].weight for n in names]
