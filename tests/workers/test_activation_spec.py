"""Activation widths in the job spec: validated at submit time with the reason."""

import pytest
from pydantic import ValidationError

from kernels.scheme import ActivationScheme
from workers.spec import JobSpec

BASE = {"model": "digits-cnn", "budgets": {"bops": 1e6}}


def test_activation_bits_default_and_settings():
    spec = JobSpec.model_validate(BASE)
    assert spec.activation_bits == [16] and not spec.quantizes_activations()
    spec = JobSpec.model_validate({**BASE, "activation_bits": [16, 4, 8, 8],
                                   "quant": {"activation": {"range": "percentile", "percentile": 99.9,
                                                            "symmetric": True}}})
    assert spec.activation_bits == [4, 8, 16] and spec.quantizes_activations()
    assert spec.quant.scheme().activation == ActivationScheme("static", "percentile", True, 99.9)
    per_layer = JobSpec.model_validate({**BASE, "overrides": {"activation_bits": {"fc": [8, 8, 16]}}})
    assert per_layer.quantizes_activations() and per_layer.overrides.activation_bits == {"fc": [8, 16]}


@pytest.mark.parametrize("extra, reason", [
    ({"activation_bits": [5]}, "activation bits must be one of [4, 6, 8, 16]"),
    ({"activation_bits": []}, "at least 1"),
    ({"activation_bits": [8], "method": "lrp"}, "does not estimate activation sensitivity"),
    ({"activation_bits": [8], "method": "hawq_v1"}, "use one of hawq_v2, fisher, empirical"),
    ({"activation_bits": [8], "export": "gptq"}, "need export 'bitalloc'"),
    ({"quant": {"activation": {"mode": "dynamic", "range": "mse"}}}, "needs mode 'static'"),
    ({"quant": {"activation": {"mode": "per_channel"}}}, "static"),
    ({"quant": {"activation": {"percentile": 40}}}, "greater than 50"),
    ({"overrides": {"activation_bits": {"fc": [3]}}}, "activation bits must be one of"),
    ({"overrides": {"activation_bits": {"fc": []}}}, "empty"),
])
def test_bad_activation_settings_are_refused_with_the_reason(extra, reason):
    with pytest.raises(ValidationError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        JobSpec.model_validate({**BASE, **extra})


def test_activation_methods_accept():
    for method in ("hawq_v2", "fisher", "empirical"):
        JobSpec.model_validate({**BASE, "method": method, "activation_bits": [4, 16]})
