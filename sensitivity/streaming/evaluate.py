"""Block-streamed quality of an allocation: the causal-LM family's evaluation
(`sensitivity.models.causal_lm`: perplexity, mean KL to the full-precision next-token
distributions, top-1 agreement with them) of the model with some layers' weights
fake-quantized, one block resident.

Every batch's hidden state goes through block i before block i+1 is read, so each
block is read once per evaluation; the quantized weights replace the materialized
block's own (it is released, and re-read in full precision next time); the resident
embedding and head are quantized in place and read back from the store after. The
full-precision reference is computed the same way and kept as fp16 log-probabilities,
as the family keeps it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch

from kernels.fake_quant import fake_quantize_weight
from kernels.scheme import QuantConfig
from sensitivity.bundle import Batch
from sensitivity.models.lm_metrics import lm_quality, reference_of
from sensitivity.streaming.gauss_newton import EMBEDDING, HEAD
from sensitivity.streaming.hidden import HiddenStates
from sensitivity.streaming.skeleton import StreamedCausalLM


@contextlib.contextmanager
def _last_hidden(lm: StreamedCausalLM, batches: Sequence[Batch], configs: Mapping[str, QuantConfig],
                 hidden: HiddenStates) -> Iterator[HiddenStates]:
    """Each batch's last hidden state (key: the batch's index) with the layers in `configs`
    at Q(W) (round-to-nearest); the quantized resident layers stay so inside, for the head."""
    configs = dict(configs)
    unknown = [n for n in configs if n not in (EMBEDDING, HEAD) and lm.block_of(n) is None]
    if unknown or (lm.tied and HEAD in configs):
        raise ValueError(f"not layers of the streamed model: {', '.join(unknown or [HEAD])}")
    resident = {EMBEDDING: lm.decoder.embed_tokens, HEAD: lm.model.lm_head}
    changed = []
    try:
        with torch.no_grad():
            for name in (n for n in configs if n in resident):  # in place (a tied head follows)
                changed.append(name)
                resident[name].weight.copy_(fake_quantize_weight(resident[name], configs[name]))
            calls = [lm.block_calls(b) for b in batches]
            for b, call in enumerate(calls):
                hidden.put(b, call.embeddings)
            for i in range(len(lm)):
                with lm.block(i):
                    for name, module in lm.block_names(i).items():
                        if name in configs:
                            module.weight.copy_(fake_quantize_weight(module, configs[name]))
                    for b, call in enumerate(calls):
                        hidden.put(b, lm.run_block(i, hidden.get(b), call))
        yield hidden
    finally:
        for name in changed:  # the stored values back: no second copy of a resident matrix
            lm.reload(name)
        hidden.close()


@torch.no_grad()
def streamed_logits(lm: StreamedCausalLM, batches: Sequence[Batch],
                    configs: Mapping[str, QuantConfig] | None = None,
                    hidden: HiddenStates | None = None) -> list[torch.Tensor]:
    """Each batch's logits with the layers in `configs` at Q(W) (round-to-nearest)."""
    with _last_hidden(lm, batches, configs or {}, hidden if hidden is not None else HiddenStates()) as last:
        return [lm.head(last.get(b)) for b in range(len(batches))]


class StreamedEvaluation:
    """The family's quality metrics on held-out `batches`, against the streamed
    full-precision model's reference (computed once). Logits are made one batch at a
    time from the last hidden states (an LLM's are tokens × vocabulary floats each)."""

    def __init__(self, lm: StreamedCausalLM, batches: Sequence[Batch], hidden_budget: int | None = None):
        self.lm, self.batches, self.hidden_budget = lm, list(batches), hidden_budget
        with torch.no_grad(), _last_hidden(lm, self.batches, {}, HiddenStates(hidden_budget)) as last:
            self.reference = [reference_of(lm.head(last.get(b))) for b in range(len(self.batches))]

    def __call__(self, configs: Mapping[str, QuantConfig] | None = None) -> dict[str, float]:
        n = len(self.batches)
        with torch.no_grad(), _last_hidden(self.lm, self.batches, configs or {},
                                           HiddenStates(self.hidden_budget)) as last:
            return lm_quality(self.batches, (self.lm.head(last.get(b)) for b in range(n)), self.reference)
