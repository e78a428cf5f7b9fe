"""Per-layer traces → Ω, shared by hawq_v2, fisher and interlayer:
Ω_l(b) = ½ · (Tr_l / n_l) · ‖ΔW_l(b)‖² with Tr_l the layer's Hessian or
Gauss–Newton trace (DESIGN §4).

A trace backend computes every layer's trace: Hutchinson's estimator with one
of our engines (`sensitivity.estimators.hutchinson`), or PyHessian's trace per
layer under our standard-error stopping rule (exact mode only). Each method picks
its backend from its config; `trace_table` turns the traces into the table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from sensitivity.estimators.context import EstimatorContext
from sensitivity.estimators.hutchinson import (
    ProbeEngine,
    TraceResult,
    gauss_newton_engine,
    hessian_engine,
    hutchinson_traces,
)
from sensitivity.methods import FisherConfig, HawqV2Config, ProbeSettings
from sensitivity.omega import second_order_omega
from sensitivity.table import SensitivityTable

PYHESSIAN_BLOCK = 8  # PyHessian samples drawn per call when `block` is 0


class TraceBackend(Protocol):
    def __call__(self, ctx: EstimatorContext) -> TraceResult: ...


@dataclass(frozen=True)
class HutchinsonTraces:
    engine: type[ProbeEngine]
    probes: ProbeSettings

    def __call__(self, ctx: EstimatorContext) -> TraceResult:
        return hutchinson_traces(ctx, self.engine, self.probes)


@dataclass(frozen=True)
class PyHessianTraces:
    """PyHessian's per-layer Hutchinson samples (one calibration batch), `block` per call."""

    probes: ProbeSettings

    def __call__(self, ctx: EstimatorContext) -> TraceResult:
        from sensitivity.backends.pyhessian_backend import pyhessian_layer_trace_to_tol

        start = time.perf_counter()
        p = self.probes
        stats = {}
        for k, name in enumerate(ctx.names):
            stats[name] = pyhessian_layer_trace_to_tol(ctx.bundle, name, p.tol, p.min_probes, p.max_probes,
                                                       p.block or PYHESSIAN_BLOCK, p.seed)
            ctx.progress((k + 1) / len(ctx.names),
                         f"PyHessian trace {name}: {stats[name].n} probes, "
                         f"rel. error {stats[name].rel_error:.1%}")
        return TraceResult(stats, sum(s.n for s in stats.values()), time.perf_counter() - start,
                           "pyhessian")


def hessian_traces(ctx: EstimatorContext, config: HawqV2Config) -> TraceBackend:
    """hawq_v2's Hessian traces (interlayer's per-layer terms too)."""
    if config.backend == "pyhessian":
        return PyHessianTraces(config.probes)
    return HutchinsonTraces(hessian_engine(ctx.bundle, config.engine, config.mode), config.probes)


def gauss_newton_traces(ctx: EstimatorContext, config: FisherConfig) -> TraceBackend:
    """fisher's Gauss–Newton traces: output-space probes, one backward per probe."""
    return HutchinsonTraces(gauss_newton_engine(ctx.bundle, config.engine), config.probes)


def trace_table(ctx: EstimatorContext, method: str, traces: TraceBackend, params: dict[str, Any],
                evaluations: str = "hvps") -> SensitivityTable:
    """The table of second-order Ω from the backend's traces; `params` go to meta["params"],
    the evaluations spent to meta[`evaluations`] ("hvps", or "backward_passes" for fisher)."""
    start = time.perf_counter()
    result = traces(ctx)
    n = {layer.name: layer.params for layer in ctx.layers}
    per_weight = {name: s.mean / n[name] for name, s in result.stats.items()}
    return SensitivityTable(
        method=method,
        omega=second_order_omega(per_weight, ctx.quant_errors()),
        layer_stats={
            name: {"trace": s.mean, "trace_se": s.stderr, "rel_error": s.rel_error, "probes": s.n}
            for name, s in result.stats.items()
        },
        meta={"params": params, "engine": result.engine, evaluations: result.hvps,
              "trace_seconds": result.seconds,
              "max_rel_error": max((s.rel_error for s in result.stats.values()), default=0.0),
              "seconds": time.perf_counter() - start},
    )
