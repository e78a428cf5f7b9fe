"""`hawq_v2` (HAWQ-V2): Ω_l(b) = ½ · (Tr(H_ll)/n_l) · ‖ΔW_l(b)‖², traces by Hutchinson.

Params: those of `TraceParams` (mode, tol, min_probes, max_probes, seed, engine,
block) plus `backend` ("bitalloc" or "pyhessian": PyHessian's trace per layer,
exact mode only, under our standard-error stopping rule).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from kernels.quantizer import QuantConfig
from sensitivity.bundle import ModelBundle
from sensitivity.estimators.hutchinson import TraceParams, TraceResult, hutchinson_traces
from sensitivity.layers import LayerInfo
from sensitivity.omega import quant_errors, second_order_omega
from sensitivity.params import build_params, split_params
from sensitivity.progress import Progress
from sensitivity.table import Choice, SensitivityTable

BACKENDS = ("bitalloc", "pyhessian")


def parse_params(params: dict[str, Any], method: str = "hawq_v2") -> tuple[TraceParams, str]:
    own, rest = split_params(params, ["backend"])
    backend = own.get("backend", "bitalloc")
    if backend not in BACKENDS:
        raise ValueError(f"{method}: backend must be one of {BACKENDS}, got {backend!r}")
    try:
        trace = build_params(TraceParams, rest, method)
    except ValueError as exc:
        if "unknown parameter" in str(exc):
            accepted = [f.name for f in fields(TraceParams)] + ["backend"]
            raise ValueError(f"{method}: unknown parameter(s) "
                             f"{', '.join(sorted(set(rest) - set(accepted)))}; "
                             f"accepted: {', '.join(accepted)}") from None
        raise
    if backend == "pyhessian" and trace.mode != "exact":
        raise ValueError(f"{method}: backend='pyhessian' computes exact per-layer traces; "
                         "use mode='exact'")
    return trace, backend


def layer_traces(bundle: ModelBundle, names: Sequence[str], trace: TraceParams, backend: str,
                 progress: Progress, gauss_newton: bool = False) -> TraceResult:
    if backend == "bitalloc":
        return hutchinson_traces(bundle, names, trace, progress, gauss_newton)
    from sensitivity.backends.pyhessian_backend import pyhessian_layer_trace_to_tol

    start = time.perf_counter()
    stats = {}
    for k, name in enumerate(names):
        stats[name] = pyhessian_layer_trace_to_tol(bundle, name, trace.tol, trace.min_probes,
                                                   trace.max_probes, trace.block or 8, trace.seed)
        progress("sensitivity", (k + 1) / len(names),
                 f"PyHessian trace {name}: {stats[name].n} probes, "
                 f"rel. error {stats[name].rel_error:.1%}")
    return TraceResult(stats, sum(s.n for s in stats.values()), time.perf_counter() - start,
                       "pyhessian")


def trace_table(method: str, bundle: ModelBundle, layers: Sequence[LayerInfo],
                choices: Sequence[Choice], quant: QuantConfig, trace: TraceParams, backend: str,
                progress: Progress, gauss_newton: bool = False) -> SensitivityTable:
    start = time.perf_counter()
    names = [layer.name for layer in layers]
    result = layer_traces(bundle, names, trace, backend, progress, gauss_newton)
    n = {layer.name: layer.params for layer in layers}
    per_weight = {name: s.mean / n[name] for name, s in result.stats.items()}
    errors = quant_errors(bundle.model, names, choices, quant)
    return SensitivityTable(
        method=method,
        omega=second_order_omega(per_weight, errors),
        layer_stats={
            name: {"trace": s.mean, "trace_se": s.stderr, "rel_error": s.rel_error, "probes": s.n}
            for name, s in result.stats.items()
        },
        meta={"params": {**trace.as_dict(), "backend": backend}, "engine": result.engine,
              "hvps": result.hvps, "trace_seconds": result.seconds,
              "max_rel_error": max((s.rel_error for s in result.stats.values()), default=0.0),
              "seconds": time.perf_counter() - start},
    )


def estimate(
    bundle: ModelBundle, layers: Sequence[LayerInfo], choices: Sequence[Choice],
    quant: QuantConfig, params: dict[str, Any], progress: Progress,
) -> SensitivityTable:
    trace, backend = parse_params(params)
    return trace_table("hawq_v2", bundle, layers, choices, quant, trace, backend, progress)
