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


class OutputGraph:
    """One forward pass of a calibration batch with the layer outputs z_l (and
    inputs x_l) held, answering per-sample Gauss–Newton probes by batched backward
    passes from the output to the z_l (the graph is kept between calls).

    For z = x Wᵀ over positions t, the per-sample weight-gradient norm is
    ‖Σ_t g_t x_tᵀ‖² = Σ_{t,t'} (g_t·g_t')(x_t·x_t'): a (T × T) Gram product per
    sample, and the input Gram x_t·x_t' does not depend on the probe, so it is
    formed once (convolutions unfold their input; embeddings compare token ids).
    Samples must be independent along dim 0 of the output (eval mode)."""

    def __init__(self, pert: Perturbation, batch: Batch, layers: Sequence[int]):
        self.pert, self.batch = pert, batch
        inputs: dict[int, torch.Tensor] = {}
        self.z: dict[int, torch.Tensor] = {}

        def hook(i, module, args, out):
            inputs[i] = args[0].detach()
            if not out.requires_grad:
                out = out.detach().requires_grad_(True)
            self.z[i] = out
            return out

        handles = [pert.modules[i].register_forward_hook(partial(hook, i)) for i in layers]
        try:
            self.output = pert.bundle.forward(pert.bundle.model, batch)
        finally:
            for h in handles:
                h.remove()
        missing = [pert.names[i] for i in layers if i not in self.z]
        if missing:
            raise ValueError(f"layers not run by the model's forward: {', '.join(missing)}")
        self.gram_x = {i: _input_gram(pert.modules[i], inputs[i]) for i in layers}

    def probe_norms(self, k: int, gen: torch.Generator, layers: Sequence[int]) -> torch.Tensor:
        """(k, len(layers)) float64: Σ_s ‖J_{l,s}ᵀ u_s‖² for k probes u ~ H_out^{1/2}."""
        u = self.pert.bundle.output_loss.probes(self.output.detach(), self.batch, k, gen)
        live = [i for i in layers if self.z[i].requires_grad]
        grads = torch.autograd.grad(self.output, [self.z[i] for i in live], grad_outputs=u,
                                    is_grads_batched=True, allow_unused=True, retain_graph=True)
        cols = {i: torch.zeros(k, dtype=torch.float64) for i in layers}
        for i, g in zip(live, grads):
            if g is not None:
                gs = _positions(self.pert.modules[i], g)  # (k, B, T, out)
                gram_g = torch.einsum("kbto,kbso->kbts", gs, gs)
                cols[i] = (gram_g * self.gram_x[i]).sum((1, 2, 3))
        return torch.stack([cols[i] for i in layers], 1)


def per_sample_probe_norms(pert: Perturbation, batch: Batch, k: int, gen: torch.Generator,
                           layers: Sequence[int] | None = None) -> torch.Tensor:
    """(k, L) float64: Σ_s ‖J_{l,s}ᵀ u_s‖², the same expectation Tr(G_ll) as
    `output_probe_norms` without the cross-sample terms (H_out is block-diagonal
    over samples, so they have mean zero and only add variance)."""
    idx = list(range(len(pert.names))) if layers is None else list(layers)
    return OutputGraph(pert, batch, idx).probe_norms(k, gen, idx)


def _positions(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """Output gradients (k, *z.shape) as (k, B, T, out) in float64."""
    k, b = g.shape[0], g.shape[1]
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return g.reshape(k, b, g.shape[2], -1).transpose(2, 3).double()
    return g.reshape(k, b, -1, g.shape[-1]).double()


def _input_gram(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, T, T) float64: x_t·x_t' per sample, in the positions of `_positions`."""
    b = x.shape[0]
    if isinstance(module, nn.Linear):
        xs = x.reshape(b, -1, x.shape[-1]).double()
    elif isinstance(module, nn.Embedding):
        ids = x.reshape(b, -1)
        same = ids.unsqueeze(2) == ids.unsqueeze(1)
        if module.padding_idx is not None:
            keep = ids != module.padding_idx
            same = same & keep.unsqueeze(2) & keep.unsqueeze(1)
        return same.double()
    elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1 or module.padding_mode != "zeros":
            raise ValueError("per-sample Gauss–Newton probes support ungrouped, zero-padded "
                             "convolutions; use engine='gn_joint'")
        if isinstance(module, nn.Conv1d):
            x2, kernel = x.unsqueeze(-2), (1, module.kernel_size[0])
            pad, stride, dil = (0, module.padding[0]), (1, module.stride[0]), (1, module.dilation[0])
        else:
            x2, kernel = x, tuple(module.kernel_size)
            pad, stride, dil = module.padding, module.stride, module.dilation
        cols = F.unfold(x2, kernel, dilation=dil, padding=pad, stride=stride)  # (B, in·kk, T)
        xs = cols.transpose(1, 2).double()
    else:
        raise ValueError(f"Gauss–Newton probes do not support {type(module).__name__}")
    return torch.einsum("bti,bsi->bts", xs, xs)
