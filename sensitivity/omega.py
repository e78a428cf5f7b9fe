"""From per-layer curvature to Ω: the quantization error ‖ΔW_l(b)‖² of every
candidate width, and HAWQ's second-order Ω_l(b) = ½ · (Tr(H_ll)/n_l) · ‖ΔW_l(b)‖²."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from kernels.quantizer import QuantConfig, quantization_error
from sensitivity.table import Choice


def quant_errors(
    model: nn.Module, names: Sequence[str], choices: Iterable[Choice], config: QuantConfig
) -> dict[str, dict[Choice, float]]:
    """‖Q_b(W_l) − W_l‖² for every layer and choice (0 for 16-bit)."""
    modules = dict(model.named_modules())
    choices = list(choices)
    out: dict[str, dict[Choice, float]] = {}
    for name in names:
        w = modules[name].weight
        out[name] = {
            c: quantization_error(w, QuantConfig(c[0], config.group_size, config.symmetric,
                                                 config.mse_clip))
            for c in choices
        }
    return out


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
