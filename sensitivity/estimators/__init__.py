"""Sensitivity estimators: each fills one SensitivityTable (DESIGN §4).

An estimator is `estimate(bundle, layers, choices, quant, params, progress)`
returning a SensitivityTable; `METHODS` maps method names to them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kernels.quantizer import QuantConfig
from sensitivity.bundle import ModelBundle
from sensitivity.layers import LayerInfo
from sensitivity.progress import Progress
from sensitivity.table import Choice, SensitivityTable

Estimator = Callable[
    [ModelBundle, Sequence[LayerInfo], Sequence[Choice], QuantConfig, dict[str, Any], Progress],
    SensitivityTable,
]


def _methods() -> dict[str, Estimator]:
    from sensitivity.estimators import empirical, fisher, hawq_v1, hawq_v2, interlayer, lrp

    return {
        "hawq_v1": hawq_v1.estimate,
        "hawq_v2": hawq_v2.estimate,
        "fisher": fisher.estimate,
        "empirical": empirical.estimate,
        "lrp": lrp.estimate,
        "interlayer": interlayer.estimate,
    }


METHODS: dict[str, Estimator] = _methods()


def method_names() -> list[str]:
    return sorted(METHODS)


def get_estimator(method: str) -> Estimator:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; methods: {', '.join(method_names())}")
    return METHODS[method]
