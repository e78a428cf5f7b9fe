"""Layer weights as W_l + δ_l, so derivatives are taken w.r.t. small perturbation
variables δ_l at δ = 0 (equal to the derivatives w.r.t. W_l there).

Why not differentiate w.r.t. the weights themselves: an embedding table's
gradient and curvature live only on the rows the calibration data looks up.
Its δ covers only those rows (minus `padding_idx`, which autograd never
differentiates), so probes, Hessian-vector products and tangents are a few
hundred rows instead of the whole vocabulary — the trace, eigenvalue and every
quadratic form are unchanged because the Hessian is zero elsewhere.
Linear and convolution weights are replaced by W + δ through
`torch.func.functional_call`; embeddings add F.embedding(ids, δ_rows) through a
forward hook. An embedding whose weight another module also holds (tied to the LM
head) is perturbed whole, like a linear weight: `functional_call` ties the
replacement, so the head sees the same W + δ. Model parameters are frozen while a
computation runs, so autograd builds only what the δ need.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from kernels.layout import shared_users
from sensitivity.bundle import Batch, ModelBundle


class _Call(nn.Module):
    def __init__(self, inner: nn.Module, fn: Callable[[nn.Module], torch.Tensor]):
        super().__init__()
        self.inner = inner
        self.fn = fn

    def forward(self):
        return self.fn(self.inner)


def _embedding_hook(module, inputs, output, remap, delta):
    ext = torch.cat([delta, delta.new_zeros(1, delta.shape[-1])])  # last row: ids outside δ
    return output + F.embedding(remap[inputs[0]], ext)


class Perturbation:
    """δ variables for the weights of the named layers of `bundle.model`."""

    def __init__(self, bundle: ModelBundle, names: Sequence[str]):
        self.bundle = bundle
        self.names = list(names)
        modules = dict(bundle.model.named_modules())
        self.modules = [modules[n] for n in self.names]
        self.rows: dict[int, torch.Tensor] = {}  # layer index -> embedding rows perturbed
        self.remap: dict[int, torch.Tensor] = {}
        emb = [i for i, m in enumerate(self.modules) if isinstance(m, nn.Embedding)
               and not shared_users(bundle.model, self.names[i])]
        if emb:
            self._find_rows(emb)

    def _find_rows(self, indices: list[int]) -> None:
        seen: dict[int, list[torch.Tensor]] = {i: [] for i in indices}

        def record(i, module, inputs):
            seen[i].append(inputs[0].reshape(-1))

        for i in indices:
            if self.modules[i].max_norm is not None:
                raise ValueError(f"{self.names[i]}: embeddings with max_norm are not supported")
        handles = [self.modules[i].register_forward_pre_hook(partial(record, i)) for i in indices]
        streamed = self.bundle.streamed
        try:
            with torch.no_grad():
                for batch in self.bundle.calibration:
                    if streamed is not None:  # the lookup and the decoder's preamble, no block
                        streamed.lm.block_calls(batch)
                    else:
                        self.bundle.forward(self.bundle.model, batch)
        finally:
            for h in handles:
                h.remove()
        for i in indices:
            m = self.modules[i]
            rows = torch.unique(torch.cat(seen[i])) if seen[i] else torch.zeros(0, dtype=torch.long)
            if m.padding_idx is not None:
                rows = rows[rows != m.padding_idx]
            remap = torch.full((m.num_embeddings,), len(rows), dtype=torch.long)
            remap[rows] = torch.arange(len(rows))
            self.rows[i], self.remap[i] = rows, remap

    # --- shapes and directions ---------------------------------------------------

    def weight(self, i: int) -> torch.Tensor:
        return self.modules[i].weight

    def shape(self, i: int) -> tuple[int, ...]:
        w = self.weight(i)
        if i in self.rows:
            return (len(self.rows[i]), w.shape[1])
        return tuple(w.shape)

    def zeros(self, i: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        w = self.weight(i)
        return torch.zeros(self.shape(i), dtype=dtype or w.dtype)

    def restrict(self, i: int, full: torch.Tensor) -> torch.Tensor:
        """A weight-shaped direction (e.g. ΔW_l) in δ space: rows only for embeddings."""
        return full[self.rows[i]] if i in self.rows else full

    # --- evaluation --------------------------------------------------------------

    def call(self, fn: Callable[[nn.Module], torch.Tensor],
             deltas: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """fn(model) with W_l + δ_l for every δ_l given (None: unperturbed)."""
        params, handles = {}, []
        try:
            for i, d in enumerate(deltas):
                if d is None:
                    continue
                m = self.modules[i]
                if i in self.rows:
                    handles.append(m.register_forward_hook(
                        partial(_embedding_hook, remap=self.remap[i], delta=d)))
                else:
                    params[f"inner.{self.names[i]}.weight"] = m.weight.detach() + d
            return torch.func.functional_call(_Call(self.bundle.model, fn), params, ())
        finally:
            for h in handles:
                h.remove()

    def loss(self, batch: Batch, deltas: Sequence[torch.Tensor | None]) -> torch.Tensor:
        return self.call(lambda m: self.bundle.loss(m, batch), deltas)

    def output(self, batch: Batch, deltas: Sequence[torch.Tensor | None]) -> torch.Tensor:
        self.bundle.require_output_loss("this computation")
        return self.call(lambda m: self.bundle.forward(m, batch), deltas)


@contextlib.contextmanager
def frozen(model: nn.Module):
    """No parameter requires a gradient inside; flags restored after."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
