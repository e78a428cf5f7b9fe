"""`hawq_v2` (HAWQ-V2): Ω_l(b) = ½ · (Tr(H_ll)/n_l) · ‖ΔW_l(b)‖², traces by Hutchinson.

Params (`sensitivity.methods.HawqV2Config`): mode, tol, min_probes, max_probes,
seed, engine, block, and `backend` ("bitalloc" or "pyhessian": PyHessian's trace
per layer, exact mode only, under our standard-error stopping rule).
"""

from __future__ import annotations

from sensitivity.estimators.context import EstimatorContext
from sensitivity.estimators.traces import hessian_traces, trace_table
from sensitivity.methods import HawqV2Config
from sensitivity.table import SensitivityTable


def estimate(ctx: EstimatorContext, config: HawqV2Config) -> SensitivityTable:
    return trace_table(ctx, "hawq_v2", hessian_traces(ctx, config), config.meta_params())
