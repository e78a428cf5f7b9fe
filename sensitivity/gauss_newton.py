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
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

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


def per_sample_probe_norms(pert: Perturbation, batch: Batch, k: int, gen: torch.Generator,
                           layers: Sequence[int] | None = None) -> torch.Tensor:
    """(k, L) float64: Σ_s ‖J_{l,s}ᵀ u_s‖², the same expectation Tr(G_ll) as
    `output_probe_norms` without the cross-sample terms (H_out is block-diagonal
    over samples, so they have mean zero and only add variance).

    Per-sample weight-gradient norms come from one batched backward to the layer
    outputs z_l: for z = x Wᵀ over positions t, ‖Σ_t g_t x_tᵀ‖² = Σ_{t,t'}
    (g_t·g_t')(x_t·x_t'), a (T × T) Gram product per sample (convolutions unfold
    their input; embeddings compare token ids). Samples must be independent along
    dim 0 of the output (eval mode)."""
    idx = list(range(len(pert.names))) if layers is None else list(layers)
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}

    def hook(i, module, args, out):
        inputs[i] = args[0].detach()
        if not out.requires_grad:
            out = out.detach().requires_grad_(True)
        outputs[i] = out
        return out

    handles = [pert.modules[i].register_forward_hook(partial(hook, i)) for i in idx]
    try:
        output = pert.bundle.output(pert.bundle.model, batch)
    finally:
        for h in handles:
            h.remove()
    missing = [pert.names[i] for i in idx if i not in outputs]
    if missing:
        raise ValueError(f"layers not run by the model's forward: {', '.join(missing)}")
    u = pert.bundle.output_loss.probes(output.detach(), batch, k, gen)
    live = [i for i in idx if outputs[i].requires_grad]
    grads = torch.autograd.grad(output, [outputs[i] for i in live], grad_outputs=u,
                                is_grads_batched=True, allow_unused=True)
    cols = dict.fromkeys(idx)
    for i, g in zip(live, grads):
        if g is not None:
            cols[i] = _per_sample_sq_norm(pert.modules[i], inputs[i], g)
    return torch.stack([torch.zeros(k, dtype=torch.float64) if cols[i] is None else cols[i]
                        for i in idx], 1)


def _per_sample_sq_norm(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Σ_s ‖per-sample weight gradient‖² for each probe; g: (k, *z.shape)."""
    k, b = g.shape[0], g.shape[1]
    if isinstance(module, nn.Linear):
        xs = x.reshape(b, -1, x.shape[-1]).double()  # (B, T, in)
        gs = g.reshape(k, b, -1, g.shape[-1]).double()  # (k, B, T, out)
        same = None
    elif isinstance(module, nn.Embedding):
        ids = x.reshape(b, -1)
        gs = g.reshape(k, b, ids.shape[1], -1).double()
        same = (ids.unsqueeze(2) == ids.unsqueeze(1))
        if module.padding_idx is not None:
            keep = ids != module.padding_idx
            same = same & keep.unsqueeze(2) & keep.unsqueeze(1)
        xs = None
    elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1 or module.padding_mode != "zeros":
            raise ValueError("per-sample Fisher supports ungrouped, zero-padded convolutions; "
                             "use per_sample=False")
        x2 = x.unsqueeze(-2) if isinstance(module, nn.Conv1d) else x
        kernel = tuple(module.kernel_size) if isinstance(module, nn.Conv2d) else (1, module.kernel_size[0])
        pad, stride, dil = (module.padding, module.stride, module.dilation)
        if isinstance(module, nn.Conv1d):
            pad, stride, dil = (0, pad[0]), (1, stride[0]), (1, dil[0])
        cols = F.unfold(x2, kernel, dilation=dil, padding=pad, stride=stride)  # (B, in·kk, L)
        xs = cols.transpose(1, 2).double()  # (B, L, in·kk)
        gs = g.reshape(k, b, g.shape[2], -1).transpose(2, 3).double()  # (k, B, L, out)
        same = None
    else:
        raise ValueError(f"per-sample Fisher does not support {type(module).__name__}")
    gram_g = torch.einsum("kbto,kbso->kbts", gs, gs)
    gram_x = same.double() if same is not None else torch.einsum("bti,bsi->bts", xs, xs)
    return (gram_g * gram_x).sum((1, 2, 3))
