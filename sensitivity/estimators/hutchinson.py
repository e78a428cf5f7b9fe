"""Per-layer Hessian traces by Hutchinson's estimator, Tr(H_ll) = E[vᵀ H_ll v] with
Rademacher v, stopping per layer on the standard error of the mean (DESIGN §4).

How a sample is drawn is a strategy (`ProbeEngine`); the loop that draws rounds
of samples, stops layers, checkpoints and reports is the same for all of them:

- `HessianEngine` (`hvp`, mode `exact`): double backward through one graph per
  calibration batch, probing one layer at a time (no cross-layer noise);
- `SharedHessianEngine` (`hvp`, mode `shared`): one probe over all layers, vᵀHv
  split per layer (one HVP per probe, unbiased, but the off-diagonal blocks add
  variance);
- for bundles whose loss is zero-residual (the Hessian is then exactly the
  Gauss–Newton matrix Jᵀ H_out J): `TangentEngine` (`jvp`, forward mode, the
  same sample vᵀH_ll v = (J_l v)ᵀ H_out (J_l v) as `hvp`), `GaussNewtonEngine`
  (`gn`: probes u ~ H_out^{1/2} in output space, one backward gives
  Σ_s ‖J_{l,s}ᵀ u_s‖² for every layer at once, per sample so cross-sample terms
  add no noise) and `JointGaussNewtonEngine` (`gn_joint`: ‖J_lᵀ u‖², cross-sample
  terms kept). `fisher` runs the `gn` engines on any bundle with an output loss
  (then the Gauss–Newton/Fisher trace, not the Hessian's).

Each round draws `block` samples per unfinished layer; a sample is the
batch-size-weighted mean of vᵀH_b v over the calibration batches. A round is cut
into shards (a chunk of its probes on one batch, each with a generator seeded from
the seed and the shard's place, `sensitivity.shards`), run by the context's shard
executor — here, or on other workers — and merged in a fixed order, so the table
does not depend on where they ran. The state (running means, probe count, round)
is checkpointed between rounds.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sensitivity.bundle import ModelBundle
from sensitivity.estimators.context import EstimatorContext, StageProgress, WeightedBatch, weighted_batches
from sensitivity.gauss_newton import OutputGraph, output_probe_norms, tangent_quadratics
from sensitivity.hvp import LossGraph, rademacher
from sensitivity.memory import release_freed_memory
from sensitivity.methods import ProbeSettings
from sensitivity.perturb import Perturbation, frozen
from sensitivity.shards import PROBES_PER_SHARD, LocalShards, ShardRunner, merge_round, plan_round
from sensitivity.stats import RunningMean

Samples = dict[int, torch.Tensor]  # layer index -> (block,) float64 samples being summed


class ProbeEngine(ABC):
    """One way to draw trace samples. `add_samples` adds `share` × k samples of each
    active layer's trace on one calibration batch to `sample[i]` and returns the
    evaluations spent (HVPs, forward-mode tangents or backward passes)."""

    name: str  # what the table reports as meta["engine"]
    # Measured on the 2-core CPU box: batching double-backward HVPs (vmap over the
    # backward) costs more than it saves on small convolutions; forward-mode tangents
    # and output-space probes batch well.
    default_block: int

    def __init__(self, pert: Perturbation, single_batch: bool):
        self.pert = pert
        self.single_batch = single_batch  # graphs of the one batch are kept between rounds
        self._graphs: dict[int, LossGraph | OutputGraph] = {}

    @abstractmethod
    def add_samples(self, b: int, wb: WeightedBatch, k: int, gen: torch.Generator,
                    active: list[int], sample: Samples) -> int: ...

    def block(self, batches: Sequence[WeightedBatch]) -> int:
        """Probes per layer per round when the settings leave it to the engine."""
        return self.default_block

    def _graph(self, b: int, build):
        graph = self._graphs.get(b) or build()
        if self.single_batch:
            self._graphs[b] = graph
        return graph

    def _release(self) -> None:
        """After a batch whose graph is not kept (several calibration batches): its freed
        pages back to the OS before the next shard's forward pass. Without it glibc keeps
        them, the next graph and probes land partly beside them, and the resident set grows
        shard by shard within a round (smollm2-135m: the second shard of a fisher round
        peaked 120 MB above the first)."""
        if not self.single_batch:
            release_freed_memory()


# Output-space probes of one batch held at once (and, for a tied LM head, as much again
# in its output gradient): an LLM's probe is tokens x vocabulary floats (smollm2: 25 MB a
# sequence), so its block is 4 rather than 8; a small model's output keeps the default.
PROBE_BYTES = 100 * 2**20


class _OutputProbes(ProbeEngine):
    """The engines whose probes live in output space: the block is the default, or as many
    probes as PROBE_BYTES holds for the largest calibration batch's output."""

    def block(self, batches):
        bundle = self.pert.bundle
        per_sample = self.output_per_sample(batches[0].batch)
        largest = max(bundle.batch_size(wb.batch) for wb in batches)
        return max(1, min(self.default_block, int(self.probe_bytes() // (4 * per_sample * largest))))

    def probe_bytes(self) -> int:
        """The bytes one batch's probes may take."""
        return PROBE_BYTES

    def output_per_sample(self, batch) -> float:
        """Output values per sample (its probe's size), from a forward pass."""
        bundle = self.pert.bundle
        with torch.no_grad():
            return bundle.forward(bundle.model, batch).numel() / bundle.batch_size(batch)


class GaussNewtonEngine(_OutputProbes):
    name, default_block = "gn", 8

    def add_samples(self, b, wb, k, gen, active, sample):
        og = self._graph(b, lambda: OutputGraph(self.pert, wb.batch, active))  # one forward per batch
        norms = og.probe_norms(k, gen, active, keep=self.single_batch)
        del og
        self._release()
        for c, i in enumerate(active):
            sample[i] += wb.share * norms[:, c]
        return k


class StreamedGaussNewtonEngine(_OutputProbes):
    """`gn` on a block-streamed model (`ModelBundle.streamed`): each batch's
    `StreamedOutputGraph` (block inputs stored once) draws the probes `OutputGraph` draws
    from the same generator, so the samples are the whole model's."""

    name, default_block = "gn_streamed", 8

    def output_per_sample(self, batch) -> float:  # tokens x vocabulary, without a streamed pass
        return batch["input_ids"].shape[1] * self.pert.bundle.streamed.lm.config.vocab_size

    def probe_bytes(self) -> int:
        """Under a memory budget, at most half of what its plan leaves for hidden states
        (the probes and, for a tied head, their output gradient as much again). Only a
        tight budget lowers the block: a smaller block draws another probe stream, so
        the table is then not the whole model's."""
        left = self.pert.bundle.streamed.plan.hidden_budget
        return PROBE_BYTES if left is None else max(1, min(PROBE_BYTES, left // 2))

    def add_samples(self, b, wb, k, gen, active, sample):
        graph = self.pert.bundle.streamed.graph(b)
        norms = graph.probe_norms(k, gen, [self.pert.names[i] for i in active])
        for c, i in enumerate(active):
            sample[i] += wb.share * norms[:, c]
        return k


class JointGaussNewtonEngine(_OutputProbes):
    name, default_block = "gn_joint", 8

    def add_samples(self, b, wb, k, gen, active, sample):
        norms = output_probe_norms(self.pert, wb.batch, k, gen, layers=active)
        self._release()
        for c, i in enumerate(active):
            sample[i] += wb.share * norms[:, c]
        return k


class TangentEngine(ProbeEngine):
    name, default_block = "jvp", 8

    def add_samples(self, b, wb, k, gen, active, sample):
        for i in active:
            v = rademacher((k, *self.pert.shape(i)), gen)
            sample[i] += wb.share * tangent_quadratics(self.pert, wb.batch, i, v)
        return k * len(active)


class HessianEngine(ProbeEngine):
    name, default_block = "hvp", 1

    def add_samples(self, b, wb, k, gen, active, sample):
        graph = self._graph(b, lambda: LossGraph(self.pert, wb.batch, only=active))
        for i in active:
            v = rademacher((k, *self.pert.shape(i)), gen)
            hv = graph.block_hvp(i, v, batched=True)
            sample[i] += wb.share * _rowdots(v, hv)
        del graph
        self._release()
        return k * len(active)


class SharedHessianEngine(ProbeEngine):
    name, default_block = "hvp", 1

    def add_samples(self, b, wb, k, gen, active, sample):
        graph = self._graph(b, lambda: LossGraph(self.pert, wb.batch, only=active))
        for j in range(k):
            vs = [rademacher(self.pert.shape(i), gen) if i in sample else None
                  for i in range(len(self.pert.names))]
            for i, hv in zip(active, graph.hvp(vs, active)):
                sample[i][j] += wb.share * _rowdots(vs[i][None], hv[None])[0]
        del graph
        self._release()
        return k


ENGINES: dict[str, type[ProbeEngine]] = {
    "hvp": HessianEngine, "jvp": TangentEngine, "gn": GaussNewtonEngine, "gn_joint": JointGaussNewtonEngine,
}


def hessian_engine(bundle: ModelBundle, engine: str, mode: str) -> type[ProbeEngine]:
    """The engine for Hessian traces (hawq_v2): `auto` is `gn` for zero-residual bundles
    in exact mode, `hvp` otherwise; the output-space engines need a zero-residual loss."""
    if bundle.streamed is not None:
        if engine not in ("auto", "gn") or mode != "exact" or not bundle.zero_residual:
            raise ValueError(f"a block-streamed model takes hawq_v2 with engine 'auto' or 'gn' in "
                             f"exact mode on a zero-residual loss (the Gauss–Newton probes), not "
                             f"engine={engine!r}, mode={mode!r}")
        return StreamedGaussNewtonEngine
    if engine in ("jvp", "gn", "gn_joint"):
        if not bundle.zero_residual:
            raise ValueError(f"engine={engine!r} needs a bundle whose output loss is "
                             "zero-residual (its Hessian is then Jᵀ H_out J); use engine='hvp', "
                             "or method 'fisher' for the Gauss–Newton trace")
        return ENGINES[engine]
    if engine == "auto" and mode == "exact" and bundle.zero_residual:
        return GaussNewtonEngine
    return SharedHessianEngine if mode == "shared" else HessianEngine


def gauss_newton_engine(bundle: ModelBundle, engine: str) -> type[ProbeEngine]:
    """The engine for Gauss–Newton traces (fisher), on any bundle with an output loss."""
    bundle.require_output_loss("fisher")
    if bundle.streamed is not None:
        if engine == "gn_joint":
            raise ValueError("a block-streamed model takes fisher's per-sample engine ('auto' or "
                             "'gn'), not 'gn_joint'")
        return StreamedGaussNewtonEngine
    return JointGaussNewtonEngine if engine == "gn_joint" else GaussNewtonEngine


# The engines another process can rebuild from a shard's payload (`shard_runner`);
# the activation terms' engines perturb layer inputs and run their shards here.
SHARD_ENGINES: dict[str, type[ProbeEngine]] = {**ENGINES, "hvp_shared": SharedHessianEngine}


def engine_key(engine_type: type[ProbeEngine]) -> str:
    """The engine's key in SHARD_ENGINES, "" for one only this process can run."""
    return next((k for k, e in SHARD_ENGINES.items() if e is engine_type), "")


def shard_runner(bundle: ModelBundle, names: Sequence[str], engine: str) -> ShardRunner:
    """What another process runs a shard's payload with: the engine over the layers'
    weights of its own copy of the bundle."""
    if engine not in SHARD_ENGINES:
        raise ValueError(f"engine {engine!r} cannot run a shard elsewhere; "
                         f"known: {', '.join(sorted(SHARD_ENGINES))}")
    single = len(bundle.calibration) == 1
    return ShardRunner(bundle, SHARD_ENGINES[engine](Perturbation(bundle, names), single),
                       weighted_batches(bundle))


@dataclass
class TraceResult:
    stats: dict[str, RunningMean]
    hvps: int  # HVPs, forward-mode tangents or backward passes (gn engines), per probe per batch
    seconds: float
    engine: str


def hutchinson_traces(ctx: EstimatorContext, engine_type: type[ProbeEngine],
                      probes: ProbeSettings, *, pert=None, state: str = "hutchinson") -> TraceResult:
    """`pert`: what the engine perturbs (the layers' weights by default; the activation
    terms pass their inputs, `sensitivity.estimators.activation_terms`); `state`: the
    checkpoint kind of this computation, and its shards' kind (`sensitivity.shards`).
    Shards of the layers' weights run on `ctx.shards`; the others here."""
    start = time.perf_counter()
    names = ctx.names
    engine = engine_type(pert if pert is not None else Perturbation(ctx.bundle, names), ctx.single_batch)
    runner = ShardRunner(ctx.bundle, engine, ctx.batches)
    key = engine_key(engine_type) if pert is None else ""
    executor = ctx.shards if key else LocalShards()
    stats = {n: RunningMean() for n in names}
    hvps, round_ = 0, 0
    saved = ctx.checkpoint.load(state)
    if saved and "round" in saved:  # (a checkpoint from before the shards drew another stream)
        stats = {n: RunningMean.from_state(s) for n, s in saved["stats"].items()}
        hvps, round_ = saved["hvps"], saved["round"]
    active = [i for i, n in enumerate(names) if not _done(stats[n], probes)]
    k = probes.block or engine.block(ctx.batches)
    chunk = min(k, PROBES_PER_SHARD)
    report = _Reporter(ctx.progress, names, probes, k)
    with frozen(ctx.bundle.model):
        while active:
            t0 = time.perf_counter()
            shards = plan_round(state, round_, names, active, k, chunk, len(ctx.batches), probes.seed, key)
            report.round_started(stats, active, len(shards), hvps)
            results = executor.run(shards, runner, report.shards_done)
            sample, evaluations = merge_round(shards, results)
            hvps += evaluations
            for i in active:
                for x in sample[i].tolist():
                    stats[names[i]].add(x)
            round_ += 1
            active = [i for i in active if not _done(stats[names[i]], probes)]
            release_freed_memory()  # the round's graphs and probes
            report.round_seconds.append(time.perf_counter() - t0)
            ctx.checkpoint.save(state, {"stats": {n: s.to_state() for n, s in stats.items()},
                                        "hvps": hvps, "round": round_})
            report.round_finished(stats, active, hvps)
    return TraceResult(stats, hvps, time.perf_counter() - start, engine.name)


def _done(stats: RunningMean, probes: ProbeSettings) -> bool:
    return stats.done(probes.tol, probes.min_probes, probes.max_probes)


class _Reporter:
    """The stage's progress: each layer's share of the probes its stopping rule is
    forecast to need, counting the finished shards of the running round; never
    reported lower than before (a forecast can grow after a round)."""

    def __init__(self, progress: StageProgress, names: Sequence[str], probes: ProbeSettings, block: int):
        self.progress, self.names, self.probes, self.block = progress, names, probes, block
        self.round_seconds: list[float] = []
        self.best = 0.0
        self._round: tuple | None = None

    def round_started(self, stats: dict[str, RunningMean], active: list[int], shards: int, hvps: int) -> None:
        self._round = (stats, active, shards, hvps)

    def shards_done(self, n: int) -> None:
        stats, active, shards, hvps = self._round
        done = len(self.names) - len(active)
        self._emit(stats, active, self.block * n / shards,
                   f"{done}/{len(self.names)} layers converged; round shards {n}/{shards}; {hvps} HVPs")

    def round_finished(self, stats: dict[str, RunningMean], active: list[int], hvps: int) -> None:
        names, probes = self.names, self.probes
        done = len(names) - len(active)
        if active:
            needed = {i: stats[names[i]].probes_needed(probes.tol, probes.max_probes) for i in active}
            rounds_left = max(((needed[i] - stats[names[i]].n) / self.block for i in active), default=0)
            recent = sum(self.round_seconds[-3:]) / len(self.round_seconds[-3:])
            eta = max(rounds_left, 0) * recent
            worst = max(active, key=lambda i: stats[names[i]].rel_error)
            msg = (f"{done}/{len(names)} layers converged; {names[worst]}: {stats[names[worst]].n} probes, "
                   f"rel. error {stats[names[worst]].rel_error:.1%}; {hvps} HVPs; ~{eta:.0f}s left")
        else:
            msg = f"{done}/{len(names)} layers converged; {hvps} HVPs"
        self._emit(stats, active, 0.0, msg)

    def _emit(self, stats: dict[str, RunningMean], active: list[int], extra: float, msg: str) -> None:
        """`extra`: probes the running round has added to each active layer so far."""
        names, probes = self.names, self.probes
        needed = {i: stats[names[i]].probes_needed(probes.tol, probes.max_probes) for i in active}
        frac = sum(1.0 if i not in needed else min(1.0, (stats[n].n + extra) / needed[i])
                   for i, n in enumerate(names)) / len(names)
        self.best = max(self.best, frac)
        self.progress(self.best, msg)


def _rowdots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-probe ⟨a_j, b_j⟩ in float64 for (k, ...) tensors."""
    return (a.double().flatten(1) * b.double().flatten(1)).sum(1)
