"""The registry manifest: what a job can name, in one torch-free document that the
API, the dashboard and the CLI read (no mirrored lists). Built from the owners'
declarations: `sensitivity.catalog` (families, their metrics and directions,
built-in models), `sensitivity.methods` (sensitivity methods and their parameters),
`kernels.scheme` (weight widths) and `workers.spec` (budgets)."""

from __future__ import annotations

from functools import cache
from typing import Any

from kernels.export.formats import EXPORT_FORMATS
from kernels.scheme import ACTIVATION_MODES, ACTIVATION_RANGES, ACTIVATION_WIDTHS, ALGORITHMS, WEIGHT_BITS
from sensitivity.catalog import BUILTIN_MODELS, FAMILIES, model_names
from sensitivity.methods import describe as describe_methods
from workers.spec import BUDGET_KEYS


def builtin_model_names() -> list[str]:
    return model_names()


@cache
def manifest() -> dict[str, Any]:
    return {
        "models": [{"name": m.name, "family": m.family, "description": m.description}
                   for m in sorted(BUILTIN_MODELS.values(), key=lambda m: m.name)],
        "families": [{"name": f.name, "description": f.description,
                      "metrics": [{"name": m.name, "direction": m.direction,
                                   "description": m.description} for m in f.metrics]}
                     for f in FAMILIES.values()],
        # name, one-line summary, and each parameter's name, type, default and allowed values
        "methods": describe_methods(),
        "weight_bits": list(WEIGHT_BITS),
        # activation widths (JobSpec.activation_bits) and how inputs are quantized (quant.activation)
        "activation_bits": list(ACTIVATION_WIDTHS),
        "activation_modes": list(ACTIVATION_MODES),
        "activation_ranges": list(ACTIVATION_RANGES),
        "budgets": list(BUDGET_KEYS),
        "quantizers": list(ALGORITHMS),  # the algorithms that pick the integers (quant.algorithm)
        # what each export format holds (kernels.export.formats)
        "exports": [{"name": f.name, "description": f.description, "weight_bits": list(f.widths),
                     "symmetric_only": bool(f.symmetric),
                     "activation_quantization": f.input_quantization}  # stores a_bits < 16
                    for f in EXPORT_FORMATS.values()],
    }
