"""`fisher`: Ω_l(b) = ½ · (Tr(G_ll)/n_l) · ‖ΔW_l(b)‖² with G = Jᵀ H_out J the
Gauss–Newton (Fisher, for cross-entropy) matrix.

Probes u with E[u uᵀ] = H_out are drawn in output space (for softmax
cross-entropy from the exact factor of diag(p) − p pᵀ, for squared error
√(2/B)·Rademacher); one backward pass per probe gives every layer's sample
Σ_s ‖J_{l,s}ᵀ u_s‖² (engine `gn`, per sample) or ‖J_lᵀ u‖² (`gn_joint`). Never
negative. For a zero-residual loss (self-distillation at the full-precision
point) G is the Hessian, so these are exact Hessian traces.

Params (`sensitivity.methods.FisherConfig`): tol, min_probes, max_probes, seed,
engine (auto | gn | gn_joint), block.
"""

from __future__ import annotations

from sensitivity.estimators.context import EstimatorContext
from sensitivity.estimators.traces import gauss_newton_traces, trace_table
from sensitivity.methods import FisherConfig
from sensitivity.table import SensitivityTable


def estimate(ctx: EstimatorContext, config: FisherConfig) -> SensitivityTable:
    return trace_table(ctx, "fisher", gauss_newton_traces(ctx, config), config.meta_params(),
                       evaluations="backward_passes")
