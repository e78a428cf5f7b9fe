"""From per-layer curvature to Ω: HAWQ's second-order Ω_l(b) = ½ · (Tr(H_ll)/n_l) ·
‖ΔW_l(b)‖², with ‖ΔW_l(b)‖² from the job's quantizer (`sensitivity.quantized`,
`EstimatorContext.quant_errors`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sensitivity.table import Choice


def second_order_omega(
    curvature: dict[str, float], errors: dict[str, dict[Choice, float]]
) -> dict[str, dict[Choice, float]]:
    """Ω_l(b) = ½ · c_l · ‖ΔW_l(b)‖², with c_l the curvature per weight: Tr(H_ll)/n_l
    (HAWQ-V2, Fisher) or λ_max(H_ll) (HAWQ-V1).

    Negative curvature estimates (possible away from a minimum) are clamped to 0:
    a layer whose loss would fall when perturbed is not one to protect."""
    return {
        name: {c: 0.5 * max(curvature[name], 0.0) * e for c, e in row.items()}
        for name, row in errors.items()
    }


@torch.no_grad()
def weight_norms(model: nn.Module, names: Sequence[str]) -> dict[str, float]:
    modules = dict(model.named_modules())
    return {n: float(modules[n].weight.double().pow(2).sum()) for n in names}
