"""Activation bits end to end on digits-cnn (issue #17): joint (w_bits, a_bits) choices under
a BOPs budget, the measured quality of the mixed allocation with its inputs fake-quantized,
the per-layer rows, and the artifact's input quantizers."""

import json

import pytest

from kernels.activation import attach
from kernels.artifact import load_artifact
from kernels.fake_quant import fake_quantize_model
from kernels.scheme import ActivationScheme, QuantConfig
from sensitivity.activations import QuantizedActivations
from sensitivity.models.digits_cnn import DigitsCNN
from workers.pipeline import run_job
from workers.spec import JobSpec

FAST = {"tol": 0.25, "min_probes": 4, "max_probes": 12}


def _macs(result):
    return sum(layer.macs for layer in result.layers)


@pytest.fixture(scope="module")
def act_result(digits_bundle, tmp_path_factory):
    from sensitivity.layers import discover_layers

    macs = sum(layer.macs for layer in discover_layers(digits_bundle) if layer.used)
    spec = JobSpec.model_validate({
        "model": "digits-cnn", "method": "fisher", "method_params": FAST,
        # half the BOPs of W8A8: some inputs must go to 4 bits, or weights below 8
        "budgets": {"bops": macs * 8 * 8 * 0.5}, "activation_bits": [4, 8, 16], "pareto_points": 4,
    })
    folder = tmp_path_factory.mktemp("act-artifact")
    return spec, run_job(spec, artifact_dir=folder), folder


def test_bops_budget_gives_a_mixed_weight_and_activation_allocation(act_result):
    spec, result, _ = act_result
    assert result.solver.status == "optimal"
    bops = sum(layer.macs * layer.w_bits * layer.a_bits for layer in result.layers)
    assert result.summary.bops == pytest.approx(bops) and bops <= spec.budgets["bops"] * (1 + 1e-9)
    pairs = {(layer.w_bits, layer.a_bits) for layer in result.layers}
    assert len(pairs) > 1 and any(a < 16 for _, a in pairs)  # a real mixed (w, a) allocation
    assert len({a for _, a in pairs}) > 1
    for layer in result.layers:
        assert {"w4a4", "w4a8", "w8a16", "w16a16"} <= set(layer.omega_by_bits)
        assert layer.omega == pytest.approx(layer.omega_by_bits[f"w{layer.w_bits}a{layer.a_bits}"])
        assert layer.omega_by_bits["w8a4"] >= layer.omega_by_bits["w8a8"] >= layer.omega_by_bits["w8a16"]
        assert "act_trace" in layer.stats and "act_err_a4" in layer.stats
    assert result.sensitivity["activation"]["combine"] == "additive"
    tied = {layer.name: (layer.w_bits, layer.a_bits) for layer in result.layers}
    assert tied["block.conv_b"] == tied["block.downsample.0"]


def test_measured_quality_quantizes_the_inputs(act_result, digits_bundle):
    _, result, _ = act_result
    q = result.quality
    model = fake_quantize_model(digits_bundle.model,
                                {layer.name: QuantConfig(layer.w_bits) for layer in result.layers})
    acts = QuantizedActivations(digits_bundle, ActivationScheme())
    attach(model, acts.quantizers({layer.name: layer.a_bits for layer in result.layers}))
    assert q.allocation == pytest.approx(digits_bundle.evaluate(model))
    weights_only = fake_quantize_model(digits_bundle.model,
                                       {layer.name: QuantConfig(layer.w_bits) for layer in result.layers})
    assert q.allocation["test_loss"] != pytest.approx(digits_bundle.evaluate(weights_only)["test_loss"])
    drop = q.full_precision["accuracy"] - q.allocation["accuracy"]
    print(f"digits-cnn W/A mixed at half the W8A8 BOPs: accuracy {q.allocation['accuracy']:.2f} "
          f"(full precision {q.full_precision['accuracy']:.2f}, drop {drop:.2f}), "
          f"test_loss {q.allocation['test_loss']:.4f}")
    assert drop < 2.0


def test_artifact_stores_the_input_quantizers(act_result, digits_bundle):
    _, result, folder = act_result
    allocation = json.loads((folder / "allocation.json").read_text())
    quantized_inputs = {layer.name: layer.a_bits for layer in result.layers if layer.a_bits < 16}
    records = allocation["activations"]
    assert {n: r["bits"] for n, r in records.items()} == quantized_inputs
    for record in records.values():
        assert record["mode"] == "static" and record["scale"] > 0 and not record["symmetric"]
    assert allocation["quant"]["activation"]["mode"] == "static"
    model = load_artifact(folder, DigitsCNN)  # packed weights and the inputs' pre-hooks
    again = digits_bundle.evaluate(model)
    assert again["accuracy"] == pytest.approx(result.quality.allocation["accuracy"], abs=0.5)
    assert again["test_loss"] == pytest.approx(result.quality.allocation["test_loss"], rel=0.02)


def test_calibrated_weights_with_quantized_inputs(digits_bundle):
    """GPTQ weights and 8-bit inputs: the applied model is the GPTQ model with the input
    hooks on a copy; the cached weight-only model stays hook-free."""
    from kernels.scheme import QuantScheme
    from sensitivity.quantized import QuantizedWeights

    scheme = QuantScheme(algorithm="gptq")
    qw = QuantizedWeights(digits_bundle, scheme)
    names = ["fc1", "fc2", "conv.0"]
    joint = {n: (4, 8) for n in names}
    applied = qw.apply(joint)
    weights_only = qw.apply({n: (4, 16) for n in names})
    assert all(not m._forward_pre_hooks for m in weights_only.model.modules())
    assert applied.model is not weights_only.model and applied.quantized == weights_only.quantized
    import copy

    manual = copy.deepcopy(weights_only.model)
    attach(manual, qw.activations.quantizers({n: 8 for n in names}))
    assert digits_bundle.evaluate(applied.model) == pytest.approx(digits_bundle.evaluate(manual))
    assert (digits_bundle.evaluate(applied.model)["test_loss"]
            != pytest.approx(digits_bundle.evaluate(weights_only.model)["test_loss"], rel=1e-6))


def test_frontier_sweeps_the_joint_choices(act_result):
    _, result, _ = act_result
    assert result.frontier_kind == "bops" and len(result.pareto) >= 2
    costs = [p.cost for p in result.pareto]
    assert costs == sorted(costs)
    assert any(p.chosen for p in result.pareto)


def test_uniform_weight_and_activation_points_are_measured(act_result, digits_bundle):
    _, result, _ = act_result
    points = {(u.w_bits, u.a_bits): u for u in result.uniform_activation_points}
    assert set(points) == {(8, 4), (8, 8), (4, 4), (4, 8)}
    w8a8 = points[(8, 8)]
    macs = _macs(result)
    assert w8a8.cost == pytest.approx(macs * 64)  # the frontier's kind: BOPs
    model = fake_quantize_model(digits_bundle.model, {layer.name: QuantConfig(8) for layer in result.layers})
    acts = QuantizedActivations(digits_bundle, ActivationScheme())
    attach(model, acts.quantizers({layer.name: 8 for layer in result.layers}))
    assert w8a8.quality == pytest.approx(digits_bundle.evaluate(model))
    assert all(u.a_bits == 16 for u in result.uniform_points)  # the weight-only curve is unchanged
