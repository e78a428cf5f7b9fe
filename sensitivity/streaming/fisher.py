"""Block-streamed `fisher`: Tr(G_ll) by output-space Gauss–Newton probes
(`StreamedOutputGraph`) and Ω_l(b) = ½ · (Tr/n_l) · ‖ΔW_l(b)‖² with the errors
computed block by block, so no stage holds more than one block's weights.

The probe loop: rounds of `block` probes, each round one `probe_norms` call per
calibration batch from one generator, each batch's samples weighted by its share of
the calibration samples — the probes `OutputGraph.probe_norms` draws from the same
generator, so the norms equal the whole-model graph's (tests/streaming). It is not yet
the whole-model table's stream: `sensitivity.estimators.hutchinson` seeds each shard
of a round on its own (`sensitivity.shards.shard_seed`) and stops layers on their
standard error, while every layer gets the same fixed number of probes here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from kernels.fake_quant import weight_quantization_error
from kernels.scheme import QuantScheme
from sensitivity.bundle import Batch, OutputLoss
from sensitivity.memory import release_freed_memory
from sensitivity.omega import second_order_omega
from sensitivity.stats import RunningMean
from sensitivity.streaming.gauss_newton import EMBEDDING, HEAD, StreamedOutputGraph
from sensitivity.streaming.hidden import HiddenStates
from sensitivity.streaming.skeleton import StreamedCausalLM
from sensitivity.table import Choice, SensitivityTable


@dataclass
class StreamedTraces:
    stats: dict[str, RunningMean]
    backward_passes: int
    seconds: float
    round_seconds: list[float] = field(default_factory=list)


def streamed_fisher_traces(lm: StreamedCausalLM, batches: Sequence[Batch], output_loss: OutputLoss,
                           names: Sequence[str], *, probes: int, block: int = 8, seed: int = 0,
                           hidden_budget: int | None = None, keep_blocks: bool = False,
                           progress: Callable[[float, str], None] = lambda f, m: None) -> StreamedTraces:
    """`probes` samples (rounded up to whole rounds of `block`) of each layer's trace."""
    start = time.perf_counter()
    total = sum(int(b["input_ids"].shape[0]) for b in batches)
    shares = [int(b["input_ids"].shape[0]) / total for b in batches]
    hidden = HiddenStates(hidden_budget)
    graphs: dict[int, StreamedOutputGraph] = {}
    gen = torch.Generator().manual_seed(seed)
    stats = {n: RunningMean() for n in names}
    rounds = -(-probes // block)
    passes = 0
    round_seconds = []
    try:
        for r in range(rounds):
            t0 = time.perf_counter()
            sample = torch.zeros(block, len(names), dtype=torch.float64)
            for b, batch in enumerate(batches):
                if b not in graphs:  # every block input of every batch, stored once
                    graphs[b] = StreamedOutputGraph(lm, batch, output_loss, hidden=_Keyed(hidden, b),
                                                    keep_blocks=keep_blocks)
                sample += shares[b] * graphs[b].probe_norms(block, gen, names)
                passes += block
            for c, n in enumerate(names):
                for x in sample[:, c].tolist():
                    stats[n].add(x)
            release_freed_memory()
            round_seconds.append(time.perf_counter() - t0)
            progress((r + 1) / rounds, f"streamed fisher: round {r + 1}/{rounds} ({block} probes, "
                                       f"{len(batches)} batches)")
    finally:
        hidden.close()
    return StreamedTraces(stats, passes, time.perf_counter() - start, round_seconds)


class _Keyed:
    """One batch's view of a shared `HiddenStates` (keys prefixed by the batch)."""

    def __init__(self, store: HiddenStates, prefix: int):
        self.store, self.prefix = store, prefix

    def put(self, key, value):
        self.store.put((self.prefix, key), value)

    def get(self, key):
        return self.store.get((self.prefix, key))


@torch.no_grad()
def streamed_errors(lm: StreamedCausalLM, names: Sequence[str], scheme: QuantScheme,
                    choices: Sequence[Choice]) -> dict[str, dict[Choice, float]]:
    """‖ΔW_l(b)‖² under round-to-nearest for every layer and choice, block by block."""
    out: dict[str, dict[Choice, float]] = {}
    resident = {EMBEDDING: lm.decoder.embed_tokens, HEAD: lm.model.lm_head}
    for n in names:
        if lm.block_of(n) is None:
            out[n] = {c: weight_quantization_error(resident[n], scheme.for_choice(c)) for c in choices}
    for i in range(len(lm)):
        mine = [n for n in names if lm.block_of(n) == i]
        if not mine:
            continue
        with lm.block(i):
            modules = lm.block_names(i)
            for n in mine:
                out[n] = {c: weight_quantization_error(modules[n], scheme.for_choice(c)) for c in choices}
    return {n: out[n] for n in names}


def layer_sizes(lm: StreamedCausalLM, names: Sequence[str]) -> dict[str, int]:
    """n_l: the weight count of each layer (from the meta skeleton, nothing read)."""
    modules = dict(lm.model.named_modules())
    return {n: modules[n].weight.numel() for n in names}


def streamed_fisher_omega(traces: StreamedTraces, errors: dict[str, dict[Choice, float]],
                          sizes: dict[str, int]) -> dict[str, dict[Choice, float]]:
    """Ω_l(b) = ½ · (Tr(G_ll)/n_l) · ‖ΔW_l(b)‖² (`sensitivity.omega.second_order_omega`)."""
    per_weight = {n: s.mean / sizes[n] for n, s in traces.stats.items()}
    return second_order_omega(per_weight, errors)


def streamed_fisher_table(lm: StreamedCausalLM, batches: Sequence[Batch], output_loss: OutputLoss,
                          names: Sequence[str], choices: Sequence[Choice], scheme: QuantScheme, *,
                          probes: int, block: int = 8, seed: int = 0, hidden_budget: int | None = None,
                          progress: Callable[[float, str], None] = lambda f, m: None) -> SensitivityTable:
    """The `fisher` table (RTN errors) of the streamed model, in the format of
    `sensitivity.estimators.traces.trace_table`."""
    if scheme.calibrated:
        raise ValueError("the streamed fisher table takes round-to-nearest errors; "
                         f"{scheme.algorithm} needs the per-layer Hessians of the whole-model path")
    start = time.perf_counter()
    traces = streamed_fisher_traces(lm, batches, output_loss, names, probes=probes, block=block, seed=seed,
                                    hidden_budget=hidden_budget, progress=progress)
    errors = streamed_errors(lm, names, scheme, choices)
    return SensitivityTable(
        method="fisher",
        omega=streamed_fisher_omega(traces, errors, layer_sizes(lm, names)),
        layer_stats={n: {"trace": s.mean, "trace_se": s.stderr, "rel_error": s.rel_error, "probes": s.n}
                     for n, s in traces.stats.items()},
        meta={"params": {"probes": probes, "block": block, "seed": seed}, "engine": "gn",
              "streamed": True, "backward_passes": traces.backward_passes,
              "trace_seconds": traces.seconds,
              "max_rel_error": max((s.rel_error for s in traces.stats.values()), default=0.0),
              "seconds": time.perf_counter() - start})
