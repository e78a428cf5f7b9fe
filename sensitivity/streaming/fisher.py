"""Block-streamed Gauss–Newton traces with a fixed probe count, and the RTN errors
and Ω of `fisher` computed block by block, so no stage holds more than one block's
weights.

A job's `fisher` table on a streamed model runs the whole model's Hutchinson loop
(`sensitivity.estimators.hutchinson.StreamedGaussNewtonEngine`: the same shards, seeds
and stopping rule, so the same table) and takes its errors from `streamed_errors`.
`streamed_fisher_traces` is the bare probe loop bench/scale.py times against the whole
model: rounds of `block` probes, each round one `probe_norms` call per calibration
batch from one generator, each batch's samples weighted by its share of the
calibration samples — the probes `OutputGraph.probe_norms` draws from the same
generator, so the norms equal the whole-model graph's (tests/streaming).
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
from sensitivity.streaming.hidden import HiddenStates, Prefixed
from sensitivity.streaming.skeleton import StreamedCausalLM
from sensitivity.table import Choice


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
                    graphs[b] = StreamedOutputGraph(lm, batch, output_loss, hidden=Prefixed(hidden, b),
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

