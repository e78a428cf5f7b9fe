"""The activation term of Ω (issue #17): the trace of the loss Hessian w.r.t. a layer's input
against a dense Hessian, the Gauss–Newton version against a dense Jᵀ H_out J, and the joint
(w, a) choice's Ω against direct measurement on a tiny model; the cache key."""

import copy

import pytest
import torch
from sens_models import tiny_distill_mlp, tiny_mlp

from kernels.activation import quantized_inputs
from kernels.scheme import ActivationScheme, QuantScheme
from sensitivity.cache import table_key
from sensitivity.engine import compute_table
from sensitivity.estimators.activation_terms import input_quantized_loss
from sensitivity.layers import discover_layers
from sensitivity.measure import calibration_loss, replaced_weights
from sensitivity.quantized import QuantizedWeights

SCHEME = QuantScheme(group_size=4)
TIGHT = {"tol": 0.02, "min_probes": 30, "max_probes": 1000}
JOINT = [(w, a) for w in (4, 8, 16) for a in (4, 6, 8, 16)]


def dense_input_trace(bundle, name, gauss_newton=False):
    """Σ_b share_b · Tr(∂²L_b/∂a_b²) (or of J_aᵀ H_out J_a), formed densely in float64."""
    model = copy.deepcopy(bundle.model).double()
    module = dict(model.named_modules())[name]
    total = sum(bundle.batch_size(b) for b in bundle.calibration)
    trace = 0.0
    for b in bundle.calibration:
        b = {k: (v.double() if v.is_floating_point() else v) for k, v in b.items()}
        seen = {}
        handle = module.register_forward_pre_hook(
            lambda m, args, seen=seen: seen.setdefault("x", args[0].detach()))
        model(b["x"])
        handle.remove()
        x0 = seen["x"]

        def out(a, b=b, x0=x0):
            h = module.register_forward_pre_hook(lambda m, args: (a.reshape(x0.shape),))
            try:
                return model(b["x"])
            finally:
                h.remove()

        flat = x0.reshape(-1)
        if gauss_newton:
            o = out(flat).detach()
            j = torch.autograd.functional.jacobian(out, flat).reshape(o.numel(), -1)
            h_out = torch.autograd.functional.hessian(
                lambda z, b=b, shape=o.shape: bundle.output_loss(z.reshape(shape), b), o.reshape(-1))
            h = j.T @ h_out @ j
        else:
            h = torch.autograd.functional.hessian(lambda a, b=b: bundle.output_loss(out(a), b), flat)
        trace += bundle.batch_size(b) / total * float(torch.trace(h))
    return trace


@pytest.fixture(scope="module")
def mlp():
    bundle = tiny_mlp()
    return bundle, discover_layers(bundle)


@pytest.mark.parametrize("method, gn", [("hawq_v2", False), ("fisher", True)])
def test_activation_trace_matches_the_dense_hessian(mlp, method, gn, single_thread):
    bundle, layers = mlp
    table = compute_table(method, bundle, layers, JOINT, SCHEME, TIGHT, use_cache=False)
    for layer in layers:
        stats = table.layer_stats[layer.name]
        dense = dense_input_trace(bundle, layer.name, gauss_newton=gn)
        assert stats["act_trace"] == pytest.approx(dense, abs=4 * stats["act_trace_se"] + 1e-9), layer.name
    assert table.meta["activation"]["engine"] == ("input_gn" if gn else "input_hvp")


def test_table_holds_every_joint_choice_and_the_formula(mlp, single_thread):
    bundle, layers = mlp
    table = compute_table("fisher", bundle, layers, JOINT, SCHEME, {"max_probes": 16}, use_cache=False)
    weight_only = compute_table("fisher", bundle, layers, [(w, 16) for w in (4, 8, 16)], SCHEME,
                                {"max_probes": 16}, use_cache=False)
    acts = QuantizedWeights(bundle, SCHEME).activations
    for layer in layers:
        row, stats = table.omega[layer.name], table.layer_stats[layer.name]
        assert set(row) == set(JOINT)
        n_a = acts.numel(layer.name)
        assert n_a == stats["act_numel"] == layer.shape[1]  # per sample: the input features
        for w, a in JOINT:
            expected_a = 0.0 if a == 16 else 0.5 * stats["act_trace"] / n_a * stats[f"act_err_a{a}"]
            # additive: the weight term (the a = 16 table) plus the input's term
            assert row[(w, a)] == pytest.approx(weight_only.omega[layer.name][(w, 16)] + expected_a)
        assert row[(16, 4)] > row[(16, 6)] > row[(16, 8)] > row[(16, 16)]


def _measured(bundle, qw, name, choice):
    """L(layer `name`'s weight at w and its input at a) − L(full precision)."""
    w, a = choice
    base = calibration_loss(bundle)
    qs = {name: qw.activations.quantizer(name, a)} if a < 16 else {}
    with replaced_weights(bundle.model, {name: qw(name, (w, 16))}), quantized_inputs(bundle.model, qs):
        return calibration_loss(bundle) - base


def test_joint_omega_against_direct_measurement(single_thread):
    """On a zero-residual model (self-distillation at the full-precision point, where the
    second-order model is exact to leading order), against the loss measured with the
    layer's weight at w and its input at a: (1) the measured terms add up (empirical's
    additive Ω(w, a) = Ω^W(w) + Ω^A(a)); (2) hawq_v2's activation term ½·Tr(H_a)/n_a·E‖Δa‖²
    matches the measured change with only the input quantized; (3) hawq_v2's joint Ω is off
    by no more than its weight term already is (the isotropic ‖ΔW‖² model: up to 2× here)."""
    bundle = tiny_distill_mlp()
    layers = discover_layers(bundle)
    qw = QuantizedWeights(bundle, SCHEME)
    hawq = compute_table("hawq_v2", bundle, layers, JOINT, SCHEME, TIGHT, use_cache=False, weights=qw)
    emp = compute_table("empirical", bundle, layers, JOINT, SCHEME, {}, use_cache=False, weights=qw)
    base = calibration_loss(bundle)
    worst = {"additive": 0.0, "act_term": 0.0, "joint": 0.0}
    for layer in layers:
        h, e = hawq.omega[layer.name], emp.omega[layer.name]
        for choice in JOINT:
            w, a = choice
            direct = _measured(bundle, qw, layer.name, choice)
            if choice == (16, 16) or direct < 1e-6:  # below the rounding noise: nothing to compare
                continue
            worst["additive"] = max(worst["additive"], abs(e[choice] / direct - 1))
            # the joint error stays within the weight term's own error (plus 35% of the rest)
            weight_err = abs(h[(w, 16)] - _measured(bundle, qw, layer.name, (w, 16)))
            worst["joint"] = max(worst["joint"], (abs(h[choice] - direct) - weight_err) / direct)
            if w == 16 and a < 16:
                only_input = input_quantized_loss(bundle, qw.activations, layer.name, a) - base
                assert e[choice] - e[(16, 16)] == pytest.approx(only_input)  # empirical's input term
                act_term = h[choice] - h[(16, 16)]
                worst["act_term"] = max(worst["act_term"], abs(act_term / only_input - 1))
    print("worst relative errors:", {k: round(v, 3) for k, v in worst.items()})
    assert worst["additive"] < 0.15
    assert worst["act_term"] < 0.35
    assert worst["joint"] < 0.35


def test_cache_key_holds_activation_settings_only_for_activation_choices(mlp):
    bundle, layers = mlp
    weight_only = [(4, 16), (8, 16), (16, 16)]
    other = QuantScheme(group_size=4, activation=ActivationScheme(range="mse", symmetric=True))
    assert (table_key("fisher", bundle, layers, weight_only, SCHEME, {})
            == table_key("fisher", bundle, layers, weight_only, other, {}))
    assert (table_key("fisher", bundle, layers, JOINT, SCHEME, {})
            != table_key("fisher", bundle, layers, JOINT, other, {}))


def test_methods_without_an_activation_term_are_refused(mlp):
    bundle, layers = mlp
    with pytest.raises(ValueError, match="does not estimate activation sensitivity"):
        compute_table("hawq_v1", bundle, layers, JOINT, SCHEME, {}, use_cache=False)
