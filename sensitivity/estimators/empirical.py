"""`empirical` (AdaQuant / MixDQ / AIMET): Ω_l(b) = L(only layer l at b) − L(full
precision), measured on the calibration data for every candidate width.

One forward pass over the calibration data per layer and quantized choice
(16-bit choices measure the fp16 rounding of storage). Values can be negative: a quantization that
happens to lower the calibration loss is reported as measured.
Params: none (`sensitivity.methods.EmpiricalConfig`).
"""

from __future__ import annotations

import time

from sensitivity.estimators.context import EstimatorContext
from sensitivity.measure import calibration_loss, loss_with
from sensitivity.methods import EmpiricalConfig
from sensitivity.table import Choice, SensitivityTable, choice_key, parse_choice_key


def estimate(ctx: EstimatorContext, config: EmpiricalConfig) -> SensitivityTable:
    start = time.perf_counter()
    bundle, names = ctx.bundle, ctx.names
    base = calibration_loss(bundle)
    qw = ctx.weights
    saved = ctx.checkpoint.load("empirical") or {}
    omega: dict[str, dict[Choice, float]] = {
        n: {parse_choice_key(k): v for k, v in row.items()} for n, row in saved.get("omega", {}).items()}
    forwards = 0
    for k, name in enumerate(names):
        if name in omega:
            continue
        t0 = time.perf_counter()
        omega[name] = {}
        for c in ctx.choices:
            omega[name][c] = loss_with(bundle, qw, [(name, c)]) - base
            forwards += 1
        left = len(names) - k - 1
        ctx.progress((k + 1) / len(names), f"{name} measured; ~{left * (time.perf_counter() - t0):.0f}s left")
        ctx.checkpoint.save("empirical", {
            "omega": {n: {choice_key(c): v for c, v in row.items()} for n, row in omega.items()}})
    return SensitivityTable(
        method="empirical",
        omega={n: omega[n] for n in names},
        layer_stats={},
        meta={"params": config.meta_params(), "fp_loss": base,
              "forward_passes": forwards * len(bundle.calibration),
              "seconds": time.perf_counter() - start},
    )
