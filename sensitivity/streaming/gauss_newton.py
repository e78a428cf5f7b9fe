"""Block-streamed per-sample Gauss–Newton probe norms: what
`sensitivity.gauss_newton.OutputGraph.probe_norms` gives on the whole model, with one
decoder block resident.

Forward (no graph): each block's input is stored (`HiddenStates`), then the logits.
A probe round draws the output probes u from the logits with the same generator calls
as the whole-model engine, backpropagates them through the head to the last hidden
state, and then, from the top block down, recomputes each block's forward from its
stored input with a graph, taps its layers' per-sample weight-gradient norms during
the batched backward (`norm_tap`, as the whole-model graph does) and passes the
(probes, B, T, hidden) input gradient to the block below. An embedding tied to the
LM head keeps that head's output gradient (u itself) and input until the bottom,
where the two uses' norms and their cross term are summed as `OutputGraph` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch

from sensitivity.bundle import Batch, OutputLoss
from sensitivity.gauss_newton import input_gram, norm_tap, use_cross, use_norm
from sensitivity.streaming.hidden import HiddenStates
from sensitivity.streaming.skeleton import StreamedCausalLM

EMBEDDING, HEAD = "model.embed_tokens", "lm_head"


class StreamedOutputGraph:
    """One calibration batch through the streamed model, answering per-sample
    Gauss–Newton probes u ~ H_out^{1/2} for layers named as in the whole model
    (`sensitivity.layers.quantizable_modules`: a tied head is the embedding's use).
    `keep_blocks`: leave every block materialized between rounds (no re-reads)."""

    def __init__(self, lm: StreamedCausalLM, batch: Batch, output_loss: OutputLoss,
                 hidden: HiddenStates | None = None, keep_blocks: bool = False):
        self.lm, self.batch, self.output_loss = lm, batch, output_loss
        self.keep_blocks = keep_blocks
        self.call = lm.block_calls(batch)
        self.inputs = hidden if hidden is not None else HiddenStates()
        h = self.call.embeddings
        with torch.no_grad():
            for i in range(len(lm)):
                self.inputs.put(i, h)
                with lm.block(i, keep=keep_blocks):
                    h = lm.run_block(i, h, self.call)
            self.last = h
            self.output = lm.head(h)

    def probe_norms(self, k: int, gen: torch.Generator, layers: Sequence[str]) -> torch.Tensor:
        """(k, len(layers)) float64: Σ_s ‖J_{l,s}ᵀ u_s‖² for k probes u."""
        lm, wanted = self.lm, set(layers)
        unknown = [n for n in layers if n not in (EMBEDDING, HEAD) and lm.block_of(n) is None]
        if unknown or (lm.tied and HEAD in wanted):
            raise ValueError(f"not layers of the streamed model: {', '.join(unknown or [HEAD])}")
        cols = {n: torch.zeros(k, dtype=torch.float64) for n in layers}
        u = self.output_loss.probes(self.output, self.batch, k, gen)
        tied_head = lm.tied and EMBEDDING in wanted  # the head's use of the embedding's weight
        h = self.last.detach().requires_grad_(True)
        with torch.enable_grad():
            x_head = lm.decoder.norm(h)
            z = lm.model.lm_head(x_head)
            taps = {}
            if HEAD in wanted:
                z, taps[HEAD] = norm_tap(lm.model.lm_head, z, input_gram(lm.model.lm_head, x_head.detach()))
            g = self._backward(z, u, taps, h, cols)
        if not tied_head:
            del u
        lowest = min((lm.block_of(n) for n in wanted if lm.block_of(n) is not None), default=len(lm))
        for i in reversed(range(len(lm))):
            need_input = i > lowest or EMBEDDING in wanted
            mine = [n for n in layers if lm.block_of(n) == i]
            if not mine and not need_input:
                break
            x = self.inputs.get(i).detach().requires_grad_(True)
            with lm.block(i, keep=self.keep_blocks):
                modules = lm.block_names(i)
                taps = {}
                handles = [modules[n].register_forward_hook(partial(_tap, taps, n)) for n in mine]
                try:
                    with torch.enable_grad():
                        out = lm.run_block(i, x, self.call)
                finally:
                    for handle in handles:
                        handle.remove()
                g = self._backward(out, g, taps, x if need_input else None, cols)
                del out
        if EMBEDDING in wanted:
            emb, ids = lm.decoder.embed_tokens, self.batch["input_ids"]
            gram = input_gram(emb, ids)
            if not tied_head:
                with torch.enable_grad():
                    tapped, leaf = norm_tap(emb, self.call.embeddings.detach(), gram)
                    (norm,) = torch.autograd.grad(tapped, [leaf], grad_outputs=g, is_grads_batched=True)
                cols[EMBEDDING] += norm
            else:  # the lookup, the head, then their cross term (OutputGraph's order)
                head = lm.model.lm_head
                cols[EMBEDDING] += use_norm(emb, g, gram)
                cols[EMBEDDING] += use_norm(head, u, input_gram(head, x_head.detach()))
                cols[EMBEDDING] += 2 * use_cross(emb, ids, g, head, x_head.detach(), u)
        return torch.stack([cols[n] for n in layers], 1)

    @staticmethod
    def _backward(out, grad, taps: dict, x, cols: dict):
        """Batched backward of `grad` from `out`: adds each tap's norm to its column and
        returns the gradient at `x` (None without one)."""
        names = list(taps)
        targets = [taps[n] for n in names] + ([x] if x is not None else [])
        if not targets:
            return None
        grads = torch.autograd.grad(out, targets, grad_outputs=grad, is_grads_batched=True,
                                    allow_unused=True)
        for n, norm in zip(names, grads):
            if norm is not None:
                cols[n] += norm
        return grads[-1] if x is not None else None


def _tap(taps: dict, name: str, module, args, out):
    out, taps[name] = norm_tap(module, out, input_gram(module, args[0].detach()))
    return out
