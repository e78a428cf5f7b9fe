"""`empirical` (AdaQuant / MixDQ / AIMET): Ω_l(b) = L(only layer l at b) − L(full
precision), measured on the calibration data for every candidate width.

One forward pass over the calibration data per layer and quantized choice
(16-bit choices measure the fp16 rounding of storage). Values can be negative: a quantization that
happens to lower the calibration loss is reported as measured.
Params: none.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from kernels.quantizer import QuantConfig
from sensitivity.bundle import ModelBundle
from sensitivity.checkpoint import current_checkpoint
from sensitivity.layers import LayerInfo
from sensitivity.measure import QuantizedWeights, calibration_loss, loss_with
from sensitivity.progress import Progress
from sensitivity.table import Choice, SensitivityTable, choice_key, parse_choice_key


def estimate(
    bundle: ModelBundle, layers: Sequence[LayerInfo], choices: Sequence[Choice],
    quant: QuantConfig, params: dict[str, Any], progress: Progress,
) -> SensitivityTable:
    if params:
        raise ValueError(f"empirical: unknown parameter(s) {', '.join(sorted(params))}; "
                         "accepted: none")
    start = time.perf_counter()
    names = [layer.name for layer in layers]
    base = calibration_loss(bundle)
    qw = QuantizedWeights(bundle.model, quant)
    ckpt = current_checkpoint()
    saved = ckpt.load() or {}
    omega: dict[str, dict[Choice, float]] = {
        n: {parse_choice_key(k): v for k, v in row.items()}
        for n, row in saved.get("omega", {}).items()} if saved.get("kind") == "empirical" else {}
    forwards = 0
    for k, name in enumerate(names):
        if name in omega:
            continue
        t0 = time.perf_counter()
        omega[name] = {}
        for c in choices:
            omega[name][c] = loss_with(bundle, qw, [(name, c)]) - base
            forwards += 1
        left = len(names) - k - 1
        progress("sensitivity", (k + 1) / len(names),
                 f"{name} measured; ~{left * (time.perf_counter() - t0):.0f}s left")
        ckpt.save({"kind": "empirical",
                   "omega": {n: {choice_key(c): v for c, v in row.items()} for n, row in omega.items()}})
    return SensitivityTable(
        method="empirical",
        omega={n: omega[n] for n in names},
        layer_stats={},
        meta={"params": {}, "fp_loss": base, "forward_passes": forwards * len(bundle.calibration),
              "seconds": time.perf_counter() - start},
    )
