"""hawq_v1 eigenvalues, fisher traces and the forward-mode / output-space engines,
against dense Hessians and Gauss–Newton matrices of tiny models."""

import math

import pytest
import torch
from sens_dense import Dense
from sens_models import tiny_cnn, tiny_distill_mlp, tiny_mlp
from sens_run import hessian_trace_result, run_method
from sens_run import used_layers as _layers

from sensitivity.backends.pyhessian_backend import pyhessian_layer_eigenvalue


def _top_abs_eigenvalue(block: torch.Tensor) -> float:
    ev = torch.linalg.eigvalsh(block)
    return float(ev[ev.abs().argmax()])


@pytest.mark.parametrize("make", [tiny_distill_mlp, tiny_cnn])
def test_hawq_v1_eigenvalues_match_dense(make):
    bundle = make()
    layers = _layers(bundle)
    dense = Dense(bundle, [layer.name for layer in layers])
    h = dense.hessian()
    table = run_method("hawq_v1", bundle, {"tol": 1e-5, "max_iter": 200}, layers=layers)
    for i, layer in enumerate(layers):
        ref = _top_abs_eigenvalue(dense.block(h, i))
        ours = table.layer_stats[layer.name]["eigenvalue"]
        assert ours == pytest.approx(ref, rel=3e-2), (layer.name, ours, ref)
        err = table.omega[layer.name]
        assert err[(2, 16)] >= err[(4, 16)] >= err[(16, 16)] >= 0


def test_hawq_v1_pyhessian_backend_agrees():
    bundle = tiny_distill_mlp()  # one calibration batch, as PyHessian needs
    layers = _layers(bundle)
    ours = run_method("hawq_v1", bundle, {"tol": 1e-6, "max_iter": 2000}, layers=layers)
    theirs = run_method("hawq_v1", bundle, {"tol": 1e-6, "max_iter": 2000, "backend": "pyhessian"},
                        layers=layers)
    for layer in layers:
        a = ours.layer_stats[layer.name]["eigenvalue"]
        assert a == pytest.approx(theirs.layer_stats[layer.name]["eigenvalue"], rel=1e-2)
        assert a == pytest.approx(pyhessian_layer_eigenvalue(bundle, layer.name, 2000, 1e-6), rel=1e-2)


@pytest.mark.parametrize("make, engine", [(tiny_mlp, "gn"), (tiny_cnn, "gn"), (tiny_mlp, "gn_joint")])
def test_fisher_traces_match_dense_gauss_newton(make, engine):
    bundle = make()
    layers = _layers(bundle)
    dense = Dense(bundle, [layer.name for layer in layers])
    g = dense.gauss_newton()
    table = run_method("fisher", bundle, {"tol": 0.04, "min_probes": 16, "max_probes": 2000,
                                          "engine": engine, "block": 32}, layers=layers)
    for i, layer in enumerate(layers):
        s = table.layer_stats[layer.name]
        ref = float(dense.block(g, i).diagonal().sum())
        assert abs(s["trace"] - ref) <= 4 * s["trace_se"] + 1e-9, (layer.name, s, ref)
        assert s["trace"] > 0 and s["rel_error"] <= 0.04
    assert table.meta["backward_passes"] > 0


def test_zero_residual_gauss_newton_is_the_hessian():
    bundle = tiny_distill_mlp()
    layers = _layers(bundle)
    dense = Dense(bundle, [layer.name for layer in layers])
    h, g = dense.hessian(), dense.gauss_newton()
    assert torch.allclose(h, g, rtol=1e-5, atol=1e-6 * float(h.abs().max()))  # fp32 targets


def test_jvp_engine_gives_the_same_samples_as_hvp():
    bundle = tiny_distill_mlp()
    names = [layer.name for layer in _layers(bundle)]
    params = dict(min_probes=12, max_probes=12, block=4, seed=3)
    hvp = hessian_trace_result(bundle, names, engine="hvp", **params)
    jvp = hessian_trace_result(bundle, names, engine="jvp", **params)
    assert jvp.engine == "jvp" and hvp.engine == "hvp"
    for n in names:
        assert jvp.stats[n].mean == pytest.approx(hvp.stats[n].mean, rel=1e-5)
        assert jvp.stats[n].stderr == pytest.approx(hvp.stats[n].stderr, rel=1e-4)


@pytest.mark.parametrize("engine", ["jvp", "gn"])
def test_zero_residual_engines_match_dense_hessian_traces(engine):
    bundle = tiny_distill_mlp()
    names = [layer.name for layer in _layers(bundle)]
    h = Dense(bundle, names).hessian()
    dense = Dense(bundle, names)
    result = hessian_trace_result(bundle, names, engine=engine, tol=0.03, min_probes=16, max_probes=4000,
                                  block=16)
    for i, n in enumerate(names):
        ref = float(dense.block(h, i).diagonal().sum())
        assert abs(result.stats[n].mean - ref) <= 4 * result.stats[n].stderr + 1e-6 * ref, (n, ref)


def test_auto_engine_picks_output_space_probes_for_zero_residual_losses():
    table = run_method("hawq_v2", tiny_distill_mlp(), {"max_probes": 8})
    assert table.meta["engine"] == "gn"
    table = run_method("hawq_v2", tiny_mlp(), {"max_probes": 8})
    assert table.meta["engine"] == "hvp"
    with pytest.raises(ValueError, match="zero-residual"):
        run_method("hawq_v2", tiny_mlp(), {"engine": "jvp"})


def test_fisher_on_digits_cnn_is_positive_and_converges(digits_bundle):
    layers = _layers(digits_bundle)
    table = run_method("fisher", digits_bundle, {"tol": 0.1, "max_probes": 64}, layers=layers)
    for layer in layers:
        s = table.layer_stats[layer.name]
        assert s["trace"] > 0 and (s["rel_error"] <= 0.1 or s["probes"] == 64)
        assert math.isfinite(table.omega[layer.name][(2, 16)])


def test_embedding_perturbation_covers_only_used_rows():
    from torch import nn

    from sensitivity.output_loss import SquaredErrorOutput
    from sensitivity.perturb import Perturbation

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 4, padding_idx=0), nn.Tanh(), nn.Linear(4, 2)).eval()
    ids = torch.tensor([[0, 3, 7, 3], [9, 0, 0, 7]])
    with torch.no_grad():
        target = model(ids).sum(1)
    from sensitivity.bundle import ModelBundle
    from sensitivity.metrics import Metric

    loss = SquaredErrorOutput("target")
    bundle = ModelBundle("emb", model, [{"x": ids, "target": target}], forward=lambda m, b: m(b["x"]).sum(1),
                         loss=lambda m, b: loss(m(b["x"]).sum(1), b), evaluate=lambda m: {},
                         metrics=[Metric("none", higher_is_better=True)], output_loss=loss)
    pert = Perturbation(bundle, ["0"])
    assert pert.rows[0].tolist() == [3, 7, 9]  # padding row 0 excluded
    def loss_of(w):
        return loss(torch.func.functional_call(model, {"0.weight": w}, (ids,)).sum(1), bundle.calibration[0])

    full = torch.autograd.functional.hessian(loss_of, model[0].weight.detach())
    trace = float(full.reshape(200, 200).diagonal().sum())
    result = hessian_trace_result(bundle, ["0"], engine="hvp", tol=0.02, min_probes=16, max_probes=4000,
                                  block=16)
    assert abs(result.stats["0"].mean - trace) <= 4 * result.stats["0"].stderr


def test_hawq_v2_pyhessian_backend_agrees_within_error():
    bundle = tiny_distill_mlp()
    layers = _layers(bundle)
    params = {"tol": 0.05, "min_probes": 16, "max_probes": 400, "block": 16}
    ours = run_method("hawq_v2", bundle, params, layers=layers)
    theirs = run_method("hawq_v2", bundle, {**params, "backend": "pyhessian", "seed": 1}, layers=layers)
    assert theirs.meta["engine"] == "pyhessian"
    for layer in layers:
        a, b = ours.layer_stats[layer.name], theirs.layer_stats[layer.name]
        assert b["rel_error"] <= 0.05 or b["probes"] == 400
        bound = 4 * math.hypot(a["trace_se"], b["trace_se"]) + 1e-6 * a["trace"]
        assert abs(a["trace"] - b["trace"]) <= bound
