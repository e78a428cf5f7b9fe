"""Per-layer Hessian traces by Hutchinson's estimator, Tr(H_ll) = E[vᵀ H_ll v] with
Rademacher v, stopping per layer on the standard error of the mean (DESIGN §4).

Modes: `exact` probes one layer at a time (no cross-layer noise); `shared` probes
all layers with one vector and splits vᵀHv per layer (one HVP per probe, unbiased,
but the off-diagonal blocks add variance).

Engines for `exact`: `hvp` (double backward through one graph per calibration
batch, a block of probes per call); and, for bundles whose loss is zero-residual
(the Hessian is then exactly the Gauss–Newton matrix Jᵀ H_out J), `jvp` (forward
mode, the same sample vᵀH_ll v = (J_l v)ᵀ H_out (J_l v) as `hvp`), `gn` (probes
u ~ H_out^{1/2} in output space: one backward gives Σ_s ‖J_{l,s}ᵀ u_s‖² for every
layer at once, per-sample so cross-sample terms add no noise) and `gn_joint`
(‖J_lᵀ u‖², cross-sample terms kept). `auto` picks `gn` for zero-residual
bundles, `hvp` otherwise. The `fisher` method runs the `gn` engines on any
bundle with an output loss (then the Gauss–Newton/Fisher trace, not the Hessian's).

Each round draws `block` samples per unfinished layer; a sample is the
batch-size-weighted mean of vᵀH_b v over the calibration batches. The state
(running means, probe count, generator) is checkpointed between rounds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from sensitivity.bundle import ModelBundle
from sensitivity.checkpoint import current_checkpoint, generator_state, restore_generator
from sensitivity.gauss_newton import OutputGraph, output_probe_norms, tangent_quadratics
from sensitivity.hvp import LossGraph, rademacher
from sensitivity.params import check_fraction, check_positive_int
from sensitivity.perturb import Perturbation, frozen
from sensitivity.progress import Progress, no_progress
from sensitivity.stats import RunningMean

MODES = ("exact", "shared")
ENGINES = ("auto", "hvp", "jvp", "gn", "gn_joint")
GN_ENGINES = ("gn", "gn_joint")
# Measured on the 2-core CPU box: batching double-backward HVPs (vmap over the
# backward) costs more than it saves on small convolutions; forward-mode tangents
# and output-space probes batch well.
DEFAULT_BLOCK = {"hvp": 1, "jvp": 8, "gn": 8, "gn_joint": 8}


@dataclass(frozen=True)
class TraceParams:
    mode: str = "exact"
    tol: float = 0.05  # relative standard error to stop at
    min_probes: int = 8
    max_probes: int = 100
    seed: int = 0
    engine: str = "auto"
    block: int = 0  # probes per layer per round, evaluated together; 0: the engine's default

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"trace mode must be one of {MODES}, got {self.mode!r}")
        check_fraction("tol", self.tol)
        check_positive_int("min_probes", self.min_probes, 2)
        check_positive_int("max_probes", self.max_probes, 2)
        if self.min_probes > self.max_probes:
            raise ValueError("need 2 <= min_probes <= max_probes")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.engine != "auto" and self.engine != "hvp" and self.mode != "exact":
            raise ValueError(f"engine={self.engine!r} needs mode='exact'")
        check_positive_int("block", self.block, 0)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TraceResult:
    stats: dict[str, RunningMean]
    hvps: int  # HVPs, forward-mode tangents or backward passes (gn engines), per probe per batch
    seconds: float
    engine: str


def resolve_engine(bundle: ModelBundle, params: TraceParams, gauss_newton: bool = False) -> str:
    """The engine to run. `gauss_newton=True` (the fisher method) accepts the output-space
    engines on any bundle with an output loss; otherwise they need a zero-residual loss."""
    if gauss_newton:
        bundle.require_output_loss("fisher")
        if params.engine not in ("auto",) + GN_ENGINES:
            raise ValueError(f"fisher runs engine 'gn' or 'gn_joint', got {params.engine!r}")
        return "gn" if params.engine == "auto" else params.engine
    if params.engine in ("jvp",) + GN_ENGINES:
        if not bundle.zero_residual:
            raise ValueError(f"engine={params.engine!r} needs a bundle whose output loss is "
                             "zero-residual (its Hessian is then Jᵀ H_out J); use engine='hvp', "
                             "or method 'fisher' for the Gauss–Newton trace")
        return params.engine
    if params.engine == "auto" and params.mode == "exact" and bundle.zero_residual:
        return "gn"
    return "hvp"


def hutchinson_traces(
    bundle: ModelBundle, names: Sequence[str], params: TraceParams,
    progress: Progress = no_progress, gauss_newton: bool = False,
) -> TraceResult:
    start = time.perf_counter()
    engine = resolve_engine(bundle, params, gauss_newton)
    pert = Perturbation(bundle, names)
    gen = torch.Generator().manual_seed(params.seed)
    stats = {n: RunningMean() for n in names}
    hvps = 0
    ckpt = current_checkpoint()
    saved = ckpt.load()
    if saved and saved.get("kind") == "hutchinson":
        stats = {n: RunningMean.from_state(s) for n, s in saved["stats"].items()}
        hvps = saved["hvps"]
        restore_generator(gen, saved["generator"])
    total = sum(bundle.batch_size(b) for b in bundle.calibration)
    single = len(bundle.calibration) == 1
    graphs: dict[int, LossGraph | OutputGraph] = {}
    active = [i for i, n in enumerate(names) if not _done(stats[n], params)]
    round_seconds: list[float] = []
    with frozen(bundle.model):
        while active:
            t0 = time.perf_counter()
            k = params.block or DEFAULT_BLOCK[engine]
            sample = {i: torch.zeros(k, dtype=torch.float64) for i in active}
            for b, batch in enumerate(bundle.calibration):
                share = bundle.batch_size(batch) / total
                if engine == "gn":  # one forward per batch (kept for a single batch)
                    og = graphs.get(b) or OutputGraph(pert, batch, active)
                    if single:
                        graphs[b] = og
                    norms = og.probe_norms(k, gen, active)
                    for c, i in enumerate(active):
                        sample[i] += share * norms[:, c]
                    hvps += k
                    continue
                if engine == "gn_joint":
                    norms = output_probe_norms(pert, batch, k, gen, layers=active)
                    for c, i in enumerate(active):
                        sample[i] += share * norms[:, c]
                    hvps += k
                    continue
                if engine == "jvp":
                    for i in active:
                        v = rademacher((k, *pert.shape(i)), gen)
                        sample[i] += share * tangent_quadratics(pert, batch, i, v)
                        hvps += k
                    continue
                graph = graphs.get(b) or LossGraph(pert, batch, only=active)
                if single:
                    graphs[b] = graph
                if params.mode == "exact":
                    for i in active:
                        v = rademacher((k, *pert.shape(i)), gen)
                        hv = graph.block_hvp(i, v, batched=True)
                        sample[i] += share * _rowdots(v, hv)
                        hvps += k
                else:
                    for j in range(k):
                        vs = [rademacher(pert.shape(i), gen) if i in sample else None
                              for i in range(len(names))]
                        for i, hv in zip(active, graph.hvp(vs, active)):
                            sample[i][j] += share * _rowdots(vs[i][None], hv[None])[0]
                        hvps += 1
                if not single:
                    del graph
            for i in active:
                for x in sample[i].tolist():
                    stats[names[i]].add(x)
            active = [i for i in active if not _done(stats[names[i]], params)]
            round_seconds.append(time.perf_counter() - t0)
            ckpt.save({"kind": "hutchinson", "stats": {n: s.to_state() for n, s in stats.items()},
                       "hvps": hvps, "generator": generator_state(gen)})
            _report(progress, names, stats, active, params, k, hvps, round_seconds)
    return TraceResult(stats, hvps, time.perf_counter() - start, engine)


def _done(stats: RunningMean, params: TraceParams) -> bool:
    return stats.done(params.tol, params.min_probes, params.max_probes)


def _report(progress, names, stats, active, params, block, hvps, round_seconds) -> None:
    needed = {i: stats[names[i]].probes_needed(params.tol, params.max_probes) for i in active}
    rounds_left = max(((needed[i] - stats[names[i]].n) / block for i in active), default=0)
    recent = sum(round_seconds[-3:]) / len(round_seconds[-3:])
    eta = max(rounds_left, 0) * recent
    frac = sum(1.0 if i not in needed else min(1.0, stats[n].n / needed[i])
               for i, n in enumerate(names)) / len(names)
    done = len(names) - len(active)
    if active:
        worst = max(active, key=lambda i: stats[names[i]].rel_error)
        msg = (f"{done}/{len(names)} layers converged; {names[worst]}: {stats[names[worst]].n} probes, "
               f"rel. error {stats[names[worst]].rel_error:.1%}; {hvps} HVPs; ~{eta:.0f}s left")
    else:
        msg = f"{done}/{len(names)} layers converged; {hvps} HVPs"
    progress("sensitivity", frac, msg)


def _rowdots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-probe ⟨a_j, b_j⟩ in float64 for (k, ...) tensors."""
    return (a.double().flatten(1) * b.double().flatten(1)).sum(1)
