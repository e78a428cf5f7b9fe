"""A block-streamed causal LM as a job sees it: the streamed model with its
calibration and evaluation data, behind what the pipeline's stages ask of a model.

`sensitivity.models.causal_lm` builds a `ModelBundle` whose `model` is the
meta-device skeleton (embedding, final norm and head real) and whose `streamed` is
this object when `budget.plan` says the fp32 weights do not fit the worker's memory
budget. The stages then reach the block-streamed computations through it:

- the layers stage measures MACs with the bundle's (streamed) forward, as on the
  whole model; every projection of a Llama-family decoder reaches the loss;
- `fisher` (and `hawq_v2`'s `gn` engine) draw the probes of the Hutchinson loop, shard
  by shard, through `graph(b)` (`StreamedOutputGraph`: the norms `OutputGraph` gives);
- `empirical` measures with `losses` (`StreamedLosses`);
- ‖ΔW_l(b)‖² come block by block (`errors`);
- quality of an allocation is `quality(configs)` (`StreamedEvaluation`);
- the bitalloc artifact is packed block by block (`packed`).

Round-to-nearest only: GPTQ / AdaQuant's streamed pass (`streaming.gptq`) is not yet
wired to a job's quantized weights.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from kernels.scheme import QuantConfig, QuantScheme
from sensitivity.bundle import Batch, OutputLoss
from sensitivity.streaming.budget import StreamingPlan
from sensitivity.streaming.evaluate import StreamedEvaluation
from sensitivity.streaming.fisher import streamed_errors
from sensitivity.streaming.gauss_newton import StreamedOutputGraph
from sensitivity.streaming.hidden import HiddenStates, Prefixed
from sensitivity.streaming.measure import StreamedLosses
from sensitivity.streaming.skeleton import BLOCKS, StreamedCausalLM
from sensitivity.table import Choice

# the methods and engines a streamed model runs (the others need the whole model's graph)
STREAMED_METHODS = ("fisher", "hawq_v2", "empirical")


class StreamedModel:
    """`lm` with the job's calibration batches (targets included) and evaluation batches;
    `plan`: why it is streamed and how many bytes of hidden states stay in memory."""

    def __init__(self, lm: StreamedCausalLM, calibration: Sequence[Batch], evaluation: Sequence[Batch],
                 output_loss: OutputLoss, plan: StreamingPlan):
        self.lm, self.plan = lm, plan
        self.calibration, self.evaluation = list(calibration), list(evaluation)
        self.output_loss = output_loss
        self.hidden = HiddenStates(plan.hidden_budget)  # the probe graphs' block inputs
        self._graphs: dict[int, StreamedOutputGraph] = {}
        self._losses: StreamedLosses | None = None
        self._evaluation: StreamedEvaluation | None = None

    def logits(self, batch: Batch) -> torch.Tensor:
        return self.lm.logits(batch)

    def graph(self, b: int) -> StreamedOutputGraph:
        """Calibration batch b's probe graph: its block inputs stored once, kept for every round."""
        if b not in self._graphs:
            self._graphs[b] = StreamedOutputGraph(self.lm, self.calibration[b], self.output_loss,
                                                  hidden=Prefixed(self.hidden, b))
        return self._graphs[b]

    @property
    def losses(self) -> StreamedLosses:
        """The calibration losses with layers replaced (block inputs stored once)."""
        if self._losses is None:
            self._losses = StreamedLosses(self.lm, self.calibration, self.output_loss,
                                          HiddenStates(self.plan.hidden_budget))
        return self._losses

    def release(self) -> None:
        """Drop what the sensitivity stage kept (graphs, stored block inputs)."""
        self._graphs.clear()
        self.hidden.close()
        if self._losses is not None:
            self._losses.inputs.close()
            self._losses = None

    def errors(self, names: Sequence[str], scheme: QuantScheme,
               choices: Sequence[Choice]) -> dict[str, dict[Choice, float]]:
        """‖ΔW_l(b)‖² under round-to-nearest, block by block."""
        return streamed_errors(self.lm, names, scheme, choices)

    def quality(self, configs: Mapping[str, QuantConfig]) -> dict[str, float]:
        """The family's quality metrics with the layers in `configs` fake-quantized (a
        16-bit config: its fp16 storage, as `QuantizedWeights.apply` gives; none: the
        full-precision model); the reference is computed once."""
        if self._evaluation is None:
            self._evaluation = StreamedEvaluation(self.lm, self.evaluation, self.plan.hidden_budget)
        return self._evaluation(configs)

    def digest(self) -> str:
        """SHA-256 of the folder's config and safetensors files (the table cache's key)."""
        h = hashlib.sha256()
        folder = self.lm.folder
        for path in [folder / "config.json", *self.lm.store.files()]:
            h.update(path.name.encode())
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    h.update(chunk)
        return h.hexdigest()

    def packed(self, configs: Mapping[str, QuantConfig]) -> nn.Module:
        """The model packed with `configs` (`kernels.apply.apply_allocation`), one block
        read at a time: each block is packed as it is read and only its packed copy is
        kept; the resident layers are packed from the skeleton's own tensors (copied only
        for a 16-bit one, whose storage rounding would change them), so the peak is the
        packed blocks, the resident layers and one fp32 block. The skeleton is left as it was."""
        from kernels.apply import apply_allocation

        lm = self.lm
        packed_blocks = []
        for i in range(len(lm)):
            prefix = f"{BLOCKS}.{i}."
            local = {n[len(prefix):]: c for n, c in configs.items() if n.startswith(prefix)}
            with lm.block(i) as block:
                packed_blocks.append(apply_allocation(block, local))
        resident = {n: c for n, c in configs.items() if lm.block_of(n) is None}
        shared = {id(p): p for n, c in resident.items() if c.quantized
                  for p in lm.model.get_submodule(n).parameters()}  # packing only reads them
        blocks, lm.decoder.layers = lm.decoder.layers, nn.ModuleList()
        try:
            model = copy.deepcopy(lm.model, shared)
        finally:
            lm.decoder.layers = blocks
        model.set_submodule(BLOCKS, nn.ModuleList(packed_blocks))
        return apply_allocation(model, resident, inplace=True)
