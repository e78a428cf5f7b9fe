"""Block-streamed measured losses: the calibration loss with one layer's weight
replaced (what `empirical` measures, `sensitivity.measure.loss_with` on the whole
model), one decoder block resident.

The full-precision input of every block is stored once per batch (`HiddenStates`).
A layer inside block i changes nothing below it, so its loss starts from block i's
stored input: block i runs with the replaced weight, and the blocks above run on
the result. `block_losses` measures several variants of one block's layers
together, so each block above is read once for all of them, not once per variant;
their hidden states are kept in the same budgeted store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from kernels.fake_quant import fake_quantize_weight
from kernels.scheme import QuantScheme
from sensitivity.bundle import Batch, OutputLoss
from sensitivity.measure import replaced_weights
from sensitivity.streaming.gauss_newton import EMBEDDING, HEAD
from sensitivity.streaming.hidden import HiddenStates
from sensitivity.streaming.skeleton import StreamedCausalLM
from sensitivity.table import Choice

# a variant: a layer name and what its weight becomes, from its (materialized) module
Variant = tuple[str, Callable[[nn.Module], torch.Tensor]]


@torch.no_grad()
def distillation_targets(lm: StreamedCausalLM, batches: Sequence[Batch]) -> list[Batch]:
    """The batches with the full-precision next-token log-probabilities as `target`
    (fp16), as `sensitivity.models.causal_lm.causal_lm_bundle` stores them."""
    return [{**b, "target": F.log_softmax(lm.logits(b).float(), -1).half()} for b in batches]


class StreamedLosses:
    """Calibration losses of the streamed model with layers replaced, batch-size
    weighted over `batches` like `sensitivity.measure.calibration_loss`."""

    def __init__(self, lm: StreamedCausalLM, batches: Sequence[Batch], output_loss: OutputLoss,
                 hidden: HiddenStates | None = None):
        self.lm, self.batches, self.output_loss = lm, list(batches), output_loss
        self.calls = [lm.block_calls(b) for b in self.batches]
        self.inputs = hidden if hidden is not None else HiddenStates()
        total = sum(int(b["input_ids"].shape[0]) for b in self.batches)
        self.weights = [int(b["input_ids"].shape[0]) / total for b in self.batches]
        with torch.no_grad():
            hs = [call.embeddings for call in self.calls]
            for i in range(len(lm)):
                for b, h in enumerate(hs):
                    self.inputs.put((i, b), h)
                with lm.block(i):
                    hs = [lm.run_block(i, h, call) for h, call in zip(hs, self.calls)]
            for b, h in enumerate(hs):
                self.inputs.put((len(lm), b), h)  # the last block's output
        self.base = self._loss([self.inputs.get((len(lm), b)) for b in range(len(self.batches))])

    def _loss(self, last: Sequence[torch.Tensor]) -> float:
        return sum(float(self.output_loss(self.lm.head(h), b)) * w
                   for h, b, w in zip(last, self.batches, self.weights))

    def loss_with(self, name: str, weight: Callable[[nn.Module], torch.Tensor]) -> float:
        """The calibration loss with layer `name`'s weight replaced by `weight(module)`."""
        return self.losses([(name, weight)])[0]

    @torch.no_grad()
    def losses(self, variants: Sequence[Variant]) -> list[float]:
        """One loss per variant; the variants' layers must all sit in one block (or be
        the resident embedding / head)."""
        lm = self.lm
        blocks = {self._start(name) for name, _ in variants}
        if len(blocks) != 1:
            raise ValueError("measure the variants of one block at a time")
        start = blocks.pop()
        if start < 0:  # the embedding (and a head tied to it): from the lookup up
            return [self._from_embedding(name, weight) for name, weight in variants]
        if start == len(lm):  # an untied head
            return [self._head_only(weight) for _, weight in variants]
        store = HiddenStates(self.inputs.budget)
        try:
            with lm.block(start) as block:
                modules = lm.block_names(start)
                for v, (name, weight) in enumerate(variants):
                    with replaced_weights(block, {_local(name, start): weight(modules[name])}):
                        for b, call in enumerate(self.calls):
                            store.put((v, b), lm.run_block(start, self.inputs.get((start, b)), call))
            for i in range(start + 1, len(lm)):
                with lm.block(i):
                    for v in range(len(variants)):
                        for b, call in enumerate(self.calls):
                            store.put((v, b), lm.run_block(i, store.get((v, b)), call))
            return [self._loss([store.get((v, b)) for b in range(len(self.batches))])
                    for v in range(len(variants))]
        finally:
            store.close()

    def _start(self, name: str) -> int:
        if name == EMBEDDING:
            return -1
        if name == HEAD and not self.lm.tied:
            return len(self.lm)
        block = self.lm.block_of(name)
        if block is None:
            raise ValueError(f"{name}: not a layer of the streamed model")
        return block

    def _head_only(self, weight) -> float:
        head = self.lm.model.lm_head
        with replaced_weights(self.lm.model, {HEAD: weight(head)}):
            return self._loss([self.inputs.get((len(self.lm), b)) for b in range(len(self.batches))])

    def _from_embedding(self, name: str, weight) -> float:
        lm = self.lm
        with replaced_weights(lm.model, {name: weight(lm.decoder.embed_tokens)}):  # a tied head too
            hs = [lm.decoder.embed_tokens(b["input_ids"]) for b in self.batches]
            for i in range(len(lm)):
                with lm.block(i):
                    hs = [lm.run_block(i, h, call) for h, call in zip(hs, self.calls)]
            return self._loss(hs)


def _local(name: str, block: int) -> str:
    """A block layer's module name inside its block."""
    return name.split(".", 3)[3]


def streamed_empirical_omega(losses: StreamedLosses, names: Sequence[str], choices: Sequence[Choice],
                             scheme: QuantScheme,
                             progress: Callable[[float, str], None] = lambda f, m: None
                             ) -> dict[str, dict[Choice, float]]:
    """`empirical`'s Ω_l(b) = L(only layer l at b) − L(full precision) under
    round-to-nearest, the layers of one block measured together."""
    groups: dict[int, list[str]] = {}
    for n in names:
        groups.setdefault(losses._start(n), []).append(n)
    omega: dict[str, dict[Choice, float]] = {n: {} for n in names}
    for k, (_, members) in enumerate(sorted(groups.items())):
        variants = [(n, partial(_rtn, config=scheme.for_choice(c))) for n in members for c in choices]
        values = iter(losses.losses(variants))
        for n in members:
            for c in choices:
                omega[n][c] = next(values) - losses.base
        progress((k + 1) / len(groups), f"streamed empirical: {', '.join(members)} measured")
    return omega


def _rtn(module: nn.Module, config) -> torch.Tensor:
    return fake_quantize_weight(module, config)
