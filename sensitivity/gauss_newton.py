"""Gauss–Newton samples through the model outputs (G = Jᵀ H_out J).

Two cheap ways to sample per-layer curvature when the bundle exposes its output
and an output loss (`sensitivity.output_loss`):

- `tangent_quadratics`: vᵀ G_ll v = (J_l v)ᵀ H_out (J_l v) by forward-mode AD
  (`torch.func.jvp`, vmapped over a block of probes). For a zero-residual loss
  at the full-precision point H_ll = G_ll exactly, so this is the same sample as
  the double-backward vᵀ H_ll v at a fraction of the cost.
- `output_probe_norms`: ‖J_lᵀ u‖² for every layer from one backward pass per
  output-space probe u with E[u uᵀ] = H_out: unbiased for Tr(G_ll), never negative.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sensitivity.bundle import Batch
from sensitivity.perturb import Perturbation


def tangent_quadratics(pert: Perturbation, batch: Batch, i: int, probes: torch.Tensor) -> torch.Tensor:
    """(J_i v)ᵀ H_out (J_i v) for each probe v (leading dim of `probes`), float64."""
    loss = pert.bundle.output_loss
    base = [None] * len(pert.names)

    def out(d: torch.Tensor) -> torch.Tensor:
        deltas = list(base)
        deltas[i] = d
        return pert.output(batch, deltas)

    zero = pert.zeros(i)

    def one(v: torch.Tensor):
        return torch.func.jvp(out, (zero,), (v,))

    with torch.no_grad():
        primal, jv = torch.func.vmap(one, out_dims=(None, 0))(probes)
    return loss.quadratic(primal, batch, jv)


def output_probe_norms(pert: Perturbation, batch: Batch, k: int, gen: torch.Generator,
                       layers: Sequence[int] | None = None) -> torch.Tensor:
    """(k, L) float64: ‖J_lᵀ u‖² for k output-space probes u and each layer l.

    Runs inside `perturb.frozen(model)`: one forward, then one batched backward
    (`is_grads_batched`) for the k probes."""
    idx = list(range(len(pert.names))) if layers is None else list(layers)
    deltas: list[torch.Tensor | None] = [None] * len(pert.names)
    for i in idx:
        deltas[i] = pert.zeros(i).requires_grad_(True)
    output = pert.output(batch, deltas)
    u = pert.bundle.output_loss.probes(output.detach(), batch, k, gen)
    grads = torch.autograd.grad(output, [deltas[i] for i in idx], grad_outputs=u,
                                is_grads_batched=True, allow_unused=True)
    cols = [torch.zeros(k, dtype=torch.float64) if g is None else g.double().pow(2).flatten(1).sum(1)
            for g in grads]
    return torch.stack(cols, 1)
