"""`fisher`: Ω_l(b) = ½ · (Tr(G_ll)/n_l) · ‖ΔW_l(b)‖² with G = Jᵀ H_out J the
Gauss–Newton (Fisher, for cross-entropy) matrix.

Probes u with E[u uᵀ] = H_out are drawn in output space (for softmax
cross-entropy from the exact factor of diag(p) − p pᵀ, for squared error
√(2/B)·Rademacher); one backward pass per probe gives every layer's sample
Σ_s ‖J_{l,s}ᵀ u_s‖² (engine `gn`, per sample) or ‖J_lᵀ u‖² (`gn_joint`). Never
negative. For a zero-residual loss (self-distillation at the full-precision
point) G is the Hessian, so these are exact Hessian traces.

Params: tol, min_probes, max_probes, seed, engine (auto | gn | gn_joint), block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kernels.quantizer import QuantConfig
from sensitivity.bundle import ModelBundle
from sensitivity.estimators.hawq_v2 import trace_table
from sensitivity.estimators.hutchinson import TraceParams
from sensitivity.layers import LayerInfo
from sensitivity.params import accepted_names
from sensitivity.progress import Progress
from sensitivity.table import Choice, SensitivityTable

ACCEPTED = [name for name in accepted_names(TraceParams) if name != "mode"]


def parse_params(params: dict[str, Any]) -> TraceParams:
    unknown = sorted(set(params) - set(ACCEPTED))
    if unknown:
        raise ValueError(f"fisher: unknown parameter(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(ACCEPTED)}")
    trace = TraceParams(**params)
    if trace.engine not in ("auto", "gn", "gn_joint"):
        raise ValueError(f"fisher: engine must be one of auto, gn, gn_joint, got {trace.engine!r}")
    return trace


def estimate(
    bundle: ModelBundle, layers: Sequence[LayerInfo], choices: Sequence[Choice],
    quant: QuantConfig, params: dict[str, Any], progress: Progress,
) -> SensitivityTable:
    trace = parse_params(params)
    table = trace_table("fisher", bundle, layers, choices, quant, trace, "bitalloc", progress,
                        gauss_newton=True)
    table.meta["params"].pop("backend", None)
    table.meta["params"].pop("mode", None)
    table.meta["backward_passes"] = table.meta.pop("hvps")
    return table
