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
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from kernels.layout import is_linear_like, shared_users
from sensitivity.bundle import Batch
from sensitivity.memory import release_freed_memory
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


GRAM_SLICE = 4096  # output features per float64 slice in `_gram_sum`
# In `OutputGraph`'s backward pass, freed heap pages go back to the OS at every TRIM_TAPS-th
# norm tap (from the output down), and once before the probes are drawn. The backward frees
# the graph's saved tensors as it goes while it allocates batched gradients k times their
# size, which glibc places beside the holes rather than in them: on smollm2-135m (block 4)
# a shard's resident set grew 130 MB above what the forward pass and the probes hold. A
# trim costs a few milliseconds (9 of them in a 4-second shard there); the numbers do not change.
TRIM_TAPS = 24


class OutputGraph:
    """One forward pass of a calibration batch answering per-sample Gauss–Newton
    probes by batched backward passes from the output (the graph is kept between
    calls).

    For z = x Wᵀ over positions t, the per-sample weight-gradient norm is
    ‖Σ_t g_t x_tᵀ‖² = Σ_{t,t'} (g_t·g_t')(x_t·x_t'): a (T × T) Gram product per
    sample, and the input Gram x_t·x_t' does not depend on the probe, so it is
    formed once (convolutions unfold their input; embeddings compare token ids).
    A layer whose weight only it uses gets that norm from a `_NormTap` on its
    output during the backward pass, so its output gradient g is never held past
    its use (for an LLM, all layers' g for a block of probes would be most of the
    memory). A weight held by several modules (an embedding tied to the LM head)
    has one gradient, the sum over its uses: those outputs' g are kept and its norm
    adds the cross terms between the uses (`_cross`). Samples must be independent
    along dim 0 of the output (eval mode)."""

    def __init__(self, pert: Perturbation, batch: Batch, layers: Sequence[int]):
        self.pert, self.batch = pert, batch
        model = pert.bundle.model
        # the modules computing with layer i's weight: the layer itself, then its tied users
        self.uses = {i: [pert.modules[i], *shared_users(model, pert.names[i]).values()]
                     for i in layers}
        self.inputs: dict[tuple[int, int], torch.Tensor] = {}  # tied uses: their inputs
        self.z: dict[tuple[int, int], torch.Tensor] = {}  # tied uses: their outputs
        self.gram_x: dict[tuple[int, int], torch.Tensor] = {}
        self.taps: dict[int, torch.Tensor] = {}  # untied layers: d(norm) leaves

        def hook(key, module, args, out):
            i, _ = key
            self.gram_x[key] = input_gram(module, args[0].detach())
            if len(self.uses[i]) == 1:
                trim = len(self.taps) % TRIM_TAPS == TRIM_TAPS - 1
                out, self.taps[i] = norm_tap(module, out, self.gram_x[key], trim=trim)
                return out
            self.inputs[key] = args[0].detach()
            if not out.requires_grad:
                out = out.detach().requires_grad_(True)
            self.z[key] = out
            return out

        handles = [m.register_forward_hook(partial(hook, (i, j)))
                   for i in layers for j, m in enumerate(self.uses[i])]
        try:
            self.output = pert.bundle.forward(pert.bundle.model, batch)
        finally:
            for h in handles:
                h.remove()
        missing = [pert.names[i] for i in layers if (i, 0) not in self.gram_x]
        if missing:
            raise ValueError(f"layers not run by the model's forward: {', '.join(missing)}")

    def probe_norms(self, k: int, gen: torch.Generator, layers: Sequence[int],
                    keep: bool = True) -> torch.Tensor:
        """(k, len(layers)) float64: Σ_s ‖J_{l,s}ᵀ u_s‖² for k probes u ~ H_out^{1/2}.
        `keep=False`: the last call, so the backward pass frees the graph as it goes."""
        release_freed_memory()  # the forward pass's temporaries, before the probes and the backward
        u = self.pert.bundle.output_loss.probes(self.output.detach(), self.batch, k, gen)
        wanted = set(layers)
        taps = [i for i in self.taps if i in wanted]
        live = [key for key, z in self.z.items() if key[0] in wanted and z.requires_grad]
        grads = torch.autograd.grad(self.output, [self.taps[i] for i in taps] + [self.z[key] for key in live],
                                    grad_outputs=u, is_grads_batched=True, allow_unused=True,
                                    retain_graph=keep)
        del u  # (k, tokens, vocabulary): not needed for the tied uses' sums below
        cols = {i: torch.zeros(k, dtype=torch.float64) for i in layers}
        for i, g in zip(taps, grads):
            if g is not None:
                cols[i] += g
        by_use = {key: g for key, g in zip(live, grads[len(taps):]) if g is not None}
        for (i, j), g in by_use.items():
            cols[i] += use_norm(self.uses[i][j], g, self.gram_x[(i, j)])
        for i in layers:
            keys = [(i, j) for j in range(len(self.uses[i])) if (i, j) in by_use]
            for a, b in combinations(keys, 2):
                cols[i] += 2 * self._cross(a, b, by_use[a], by_use[b])
        return torch.stack([cols[i] for i in layers], 1)

    def _cross(self, a, b, ga: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
        """(k,) ⟨G_a, G_b⟩ summed over samples, for two uses of one weight."""
        return use_cross(self.uses[a[0]][a[1]], self.inputs[a], ga,
                         self.uses[b[0]][b[1]], self.inputs[b], gb)


def norm_tap(module: nn.Module, out: torch.Tensor, gram: torch.Tensor,
             trim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(`out` through a `_NormTap`, the scalar leaf whose gradient in a backward pass from
    the output is the module's per-sample weight-gradient norm), `gram` its input Gram.
    `trim`: the tap returns freed heap pages to the OS when the backward pass reaches it."""
    leaf = torch.zeros((), dtype=torch.float64, requires_grad=True)
    return _NormTap.apply(out, leaf, gram, _layout(module), trim), leaf


def use_norm(module: nn.Module, g: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """(k,) Σ_s ‖G_s‖² of one use of a weight from its output gradients (k, *z.shape)
    and its input Gram (`input_gram`)."""
    gs = _positions(module, g)  # (k, B, T, out)
    return _gram_sum(gs, gs, gram)


def use_cross(ma: nn.Module, xa: torch.Tensor, ga: torch.Tensor,
              mb: nn.Module, xb: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
    """(k,) ⟨G_a, G_b⟩ summed over samples, for two uses a, b of one weight (module,
    its input, its output gradients (k, *z.shape)). A use's per-sample gradient is
    Σ_t L_t R_tᵀ: linear layers L = output gradient, R = input; embeddings L = one-hot
    token, R = output gradient."""
    if isinstance(ma, nn.Embedding) and not isinstance(mb, nn.Embedding):
        ma, xa, ga, mb, xb, gb = mb, xb, gb, ma, xa, ga
    if is_linear_like(ma) and is_linear_like(mb):  # (g_t·g'_s)(x_t·x'_s)
        cross_x = torch.einsum("bti,bsi->bts", _rows(xa), _rows(xb))
        return _gram_sum(_positions(ma, ga), _positions(mb, gb), cross_x)
    if is_linear_like(ma) and isinstance(mb, nn.Embedding):  # g_s[id_t] (x_s·a_t)
        g_lin, x_lin = _positions(ma, ga), _rows(xa)  # (k, B, S, V), (B, S, d)
        ids = _token_ids(mb, xb)  # (B, T), -1 where the embedding has no gradient
        a_emb = _positions(mb, gb)  # (k, B, T, d)
        out = torch.zeros(ga.shape[0], dtype=torch.float64)
        for p in range(ga.shape[0]):  # one probe at a time: (B, S, V) is the big one
            picked = g_lin[p].gather(-1, ids.clamp_min(0).unsqueeze(1).expand(-1, g_lin.shape[2], -1))
            picked = picked * (ids >= 0).unsqueeze(1)  # (B, S, T)
            dots = torch.einsum("bsd,btd->bst", x_lin.double(), a_emb[p].double())
            out[p] = (picked.double() * dots).sum()
        return out
    if isinstance(ma, nn.Embedding) and isinstance(mb, nn.Embedding):  # [id_t = id'_s](a_t·a'_s)
        ia, ib = _token_ids(ma, xa), _token_ids(mb, xb)
        same = ((ia.unsqueeze(2) == ib.unsqueeze(1)) & (ia >= 0).unsqueeze(2)).double()
        return _gram_sum(_positions(ma, ga), _positions(mb, gb), same)
    raise ValueError(f"per-sample Gauss–Newton probes do not support a weight shared by "
                     f"{type(ma).__name__} and {type(mb).__name__}; use engine='gn_joint'")


def per_sample_probe_norms(pert: Perturbation, batch: Batch, k: int, gen: torch.Generator,
                           layers: Sequence[int] | None = None) -> torch.Tensor:
    """(k, L) float64: Σ_s ‖J_{l,s}ᵀ u_s‖², the same expectation Tr(G_ll) as
    `output_probe_norms` without the cross-sample terms (H_out is block-diagonal
    over samples, so they have mean zero and only add variance)."""
    idx = list(range(len(pert.names))) if layers is None else list(layers)
    return OutputGraph(pert, batch, idx).probe_norms(k, gen, idx)


class _NormTap(torch.autograd.Function):
    """Identity on a layer's output z whose gradient with respect to the scalar leaf
    `d` is the per-sample weight-gradient norm Σ_{b,t,s} (g_bt·g_bs)(x_bt·x_bs) from
    z's gradient g (per probe under `is_grads_batched`); g itself passes on unchanged."""

    @staticmethod
    def forward(z, d, gram, conv, trim):
        return z.view_as(z)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[2])
        ctx.conv, ctx.trim = inputs[3], inputs[4]

    @staticmethod
    def backward(ctx, g):
        if ctx.trim:
            release_freed_memory()
        (gram,) = ctx.saved_tensors
        a = _sample_positions(g, ctx.conv).double()  # matmul: einsum has no legacy-vmap rule
        return g, (torch.matmul(a, a.transpose(1, 2)) * gram).sum(), None, None, None


def _layout(module: nn.Module) -> bool:
    """Whether the module's output has its channels before the positions (convolutions)."""
    return isinstance(module, (nn.Conv1d, nn.Conv2d))


def _sample_positions(g: torch.Tensor, conv: bool) -> torch.Tensor:
    """One probe's output gradient (*z.shape) as (B, T, out)."""
    if conv:
        return g.reshape(g.shape[0], g.shape[1], -1).transpose(1, 2)
    return g.reshape(g.shape[0], -1, g.shape[-1])


def _positions(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """Output gradients (k, *z.shape) as (k, B, T, out), in their dtype."""
    k = g.shape[0]
    pos = _sample_positions(g.flatten(0, 1), _layout(module))
    return pos.reshape(k, g.shape[1], *pos.shape[1:])


def _gram_sum(ga: torch.Tensor, gb: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """(k,) float64: Σ_{b,t,s} (ga_t·gb_s) · fixed[b,t,s], one probe and a slice of the
    output features at a time, so a wide output (the LM head's vocabulary) is never
    held in float64 whole."""
    out = torch.zeros(ga.shape[0], dtype=torch.float64)
    width = ga.shape[-1]
    for p in range(ga.shape[0]):
        dots = torch.zeros(fixed.shape, dtype=torch.float64)
        for o in range(0, width, GRAM_SLICE):
            a = ga[p, ..., o:o + GRAM_SLICE].double()
            b = a if gb is ga else gb[p, ..., o:o + GRAM_SLICE].double()
            dots += torch.matmul(a, b.transpose(-1, -2))
        out[p] = (dots * fixed).sum()
    return out


def _rows(x: torch.Tensor) -> torch.Tensor:
    """A linear layer's input as (B, T, in) float64."""
    return x.reshape(x.shape[0], -1, x.shape[-1]).double()


def _token_ids(module: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """(B, T) token ids of an embedding's input, -1 at its padding index (no gradient)."""
    ids = ids.reshape(ids.shape[0], -1)
    if module.padding_idx is not None:
        ids = torch.where(ids == module.padding_idx, torch.full_like(ids, -1), ids)
    return ids


def input_gram(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, T, T) float64: x_t·x_t' per sample, in the positions of `_positions`."""
    b = x.shape[0]
    if is_linear_like(module):
        xs = _rows(x)
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
