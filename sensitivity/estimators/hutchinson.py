"""Per-layer Hessian traces by Hutchinson's estimator, Tr(H_ll) = E[vᵀ H_ll v] with
Rademacher v, stopping per layer on the standard error of the mean (DESIGN §4).

Modes: `exact` probes one layer at a time (one HVP per layer per probe, no
cross-layer noise); `shared` probes all layers with one vector and splits vᵀHv per
layer (one HVP per probe, unbiased, but the off-diagonal blocks add variance).
Each round draws one sample per unfinished layer: the batch-size-weighted mean of
vᵀH_b v over the calibration batches, each batch's graph built once per round.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from sensitivity.bundle import ModelBundle
from sensitivity.hvp import LossGraph, layer_weights, rademacher
from sensitivity.progress import Progress, no_progress
from sensitivity.stats import RunningMean

MODES = ("exact", "shared")


@dataclass(frozen=True)
class TraceParams:
    mode: str = "exact"
    tol: float = 0.05  # relative standard error to stop at
    min_probes: int = 8
    max_probes: int = 100
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"trace mode must be one of {MODES}, got {self.mode!r}")
        if not 0 < self.tol < 1:
            raise ValueError(f"tol must be in (0, 1), got {self.tol}")
        if not 2 <= self.min_probes <= self.max_probes:
            raise ValueError("need 2 <= min_probes <= max_probes")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TraceResult:
    stats: dict[str, RunningMean]
    hvps: int  # Hessian-vector products (backward passes through the gradient graph)
    seconds: float


def hutchinson_traces(
    bundle: ModelBundle, names: Sequence[str], params: TraceParams,
    progress: Progress = no_progress,
) -> TraceResult:
    start = time.perf_counter()
    weights = layer_weights(bundle.model, names)
    stats = {n: RunningMean() for n in names}
    gen = torch.Generator().manual_seed(params.seed)
    total = sum(bundle.batch_size(b) for b in bundle.calibration)
    active = list(range(len(names)))
    hvps = 0
    while active:
        sample = dict.fromkeys(active, 0.0)
        for batch in bundle.calibration:
            share = bundle.batch_size(batch) / total
            graph = LossGraph(bundle, weights, batch)
            if params.mode == "exact":
                for i in active:
                    v = rademacher(weights[i], gen)
                    sample[i] += share * _dot(v, graph.block_hvp(i, v))
                    hvps += 1
            else:
                vs = [rademacher(w, gen) if i in sample else None for i, w in enumerate(weights)]
                for i, hv in zip(active, graph.hvp(vs, active)):
                    sample[i] += share * _dot(vs[i], hv)
                hvps += 1
            del graph
        for i in active:
            stats[names[i]].add(sample[i])
        active = [i for i in active
                  if not stats[names[i]].done(params.tol, params.min_probes, params.max_probes)]
        done = len(names) - len(active)
        worst = max((stats[names[i]].rel_error for i in active), default=0.0)
        progress("sensitivity", done / len(names),
                 f"{done}/{len(names)} layers converged, {hvps} HVPs, worst rel. error {worst:.1%}")
    return TraceResult(stats, hvps, time.perf_counter() - start)


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a.reshape(-1).double(), b.reshape(-1).double()))
