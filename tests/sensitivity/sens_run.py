"""Running a method or a trace backend on a test bundle, without the table cache."""

from __future__ import annotations

from kernels.scheme import QuantScheme
from sensitivity.engine import compute_table
from sensitivity.estimators.context import EstimatorContext
from sensitivity.estimators.hutchinson import TraceResult
from sensitivity.estimators.traces import hessian_traces
from sensitivity.layers import discover_layers
from sensitivity.methods import HawqV2Config
from sensitivity.progress import no_progress
from sensitivity.table import SensitivityTable

CHOICES = [(2, 16), (4, 16), (16, 16)]
SCHEME = QuantScheme()


def used_layers(bundle):
    return [layer for layer in discover_layers(bundle) if layer.used]


def run_method(method: str, bundle, params: dict | None = None, *, choices=CHOICES,
               scheme: QuantScheme = SCHEME, layers=None, progress=no_progress) -> SensitivityTable:
    """The method's table as the pipeline computes it, with the cache off."""
    layers = used_layers(bundle) if layers is None else layers
    return compute_table(method, bundle, layers, choices, scheme, dict(params or {}), progress,
                         use_cache=False)


def context(bundle, names: list[str] | None = None) -> EstimatorContext:
    layers = [layer for layer in used_layers(bundle) if names is None or layer.name in names]
    return EstimatorContext(bundle, layers, CHOICES, SCHEME)


def hessian_trace_result(bundle, names: list[str] | None = None, **params) -> TraceResult:
    """hawq_v2's per-layer traces of `names` with these hawq_v2 params (engine, mode, tol, ...)."""
    ctx = context(bundle, names)
    return hessian_traces(ctx, HawqV2Config(**params))(ctx)
