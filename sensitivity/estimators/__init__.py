"""Sensitivity estimators: each fills one SensitivityTable (DESIGN §4).

Each method's module here exposes `estimate(ctx, config) -> SensitivityTable`
(`context.EstimatorContext`, and the method's validated config). The registry of
methods, their configs and modules is `sensitivity.methods.METHODS`;
`get_estimator` imports a method's module on first use. Estimators share code
through modules that are not estimators (`traces`, `hutchinson`, `context`),
never through each other.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from sensitivity.methods import METHODS, get_method, method_names

if TYPE_CHECKING:
    from sensitivity.estimators.context import Estimator

__all__ = ["METHODS", "get_estimator", "method_names"]


def get_estimator(method: str) -> Estimator:
    """The method's `estimate`; ValueError listing the methods for an unknown one."""
    return importlib.import_module(get_method(method).module).estimate
