"""`hawq_v2` (HAWQ-V2): Ω_l(b) = ½ · (Tr(H_ll)/n_l) · ‖ΔW_l(b)‖², traces by Hutchinson."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from kernels.quantizer import QuantConfig
from sensitivity.bundle import ModelBundle
from sensitivity.estimators.hutchinson import TraceParams, hutchinson_traces
from sensitivity.layers import LayerInfo
from sensitivity.omega import quant_errors, second_order_omega
from sensitivity.progress import Progress
from sensitivity.table import Choice, SensitivityTable


def estimate(
    bundle: ModelBundle, layers: Sequence[LayerInfo], choices: Sequence[Choice],
    quant: QuantConfig, params: dict[str, Any], progress: Progress,
) -> SensitivityTable:
    start = time.perf_counter()
    trace_params = TraceParams(**params)
    names = [layer.name for layer in layers]
    result = hutchinson_traces(bundle, names, trace_params, progress)
    n = {layer.name: layer.params for layer in layers}
    per_weight = {name: s.mean / n[name] for name, s in result.stats.items()}
    errors = quant_errors(bundle.model, names, choices, quant)
    return SensitivityTable(
        method="hawq_v2",
        omega=second_order_omega(per_weight, errors),
        layer_stats={
            name: {"trace": s.mean, "trace_se": s.stderr, "rel_error": s.rel_error,
                   "probes": s.n}
            for name, s in result.stats.items()
        },
        meta={"params": trace_params.as_dict(), "hvps": result.hvps,
              "trace_seconds": result.seconds, "seconds": time.perf_counter() - start},
    )
