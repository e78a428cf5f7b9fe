"""HAWQ-V2 per-layer Hutchinson traces: against PyHessian and a dense Hessian."""

import math

import pytest
import torch
from sens_run import hessian_trace_result, run_method
from torch import nn

from kernels.quantizer import quantization_error
from kernels.scheme import QuantConfig
from sensitivity.backends.pyhessian_backend import pyhessian_layer_trace
from sensitivity.bundle import ModelBundle
from sensitivity.layers import discover_layers
from sensitivity.methods import FisherConfig, HawqV2Config, InterlayerConfig
from sensitivity.metrics import Metric
from sensitivity.stats import RunningMean

CHOICES = [(2, 16), (4, 16), (8, 16), (16, 16)]


def _tiny_mlp_bundle() -> ModelBundle:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    loss = nn.CrossEntropyLoss()
    return ModelBundle(
        name="tiny-mlp", model=model, calibration=[{"x": x[:20], "y": y[:20]}, {"x": x[20:], "y": y[20:]}],
        forward=lambda m, b: m(b["x"]), loss=lambda m, b: loss(m(b["x"]), b["y"]),
        evaluate=lambda m: {}, metrics=[Metric("none", higher_is_better=True)],
    )


def _dense_block_traces(bundle: ModelBundle, names: list[str]) -> dict[str, float]:
    """Tr(H_ll) of the calibration loss, from the dense Hessian of each layer's weight."""
    modules = dict(bundle.model.named_modules())
    total = sum(bundle.batch_size(b) for b in bundle.calibration)
    out = {}
    for name in names:
        w0 = modules[name].weight.detach().clone()

        def loss_of(w, name=name):
            loss = 0.0
            for batch in bundle.calibration:
                logits = torch.func.functional_call(bundle.model, {f"{name}.weight": w}, (batch["x"],))
                share = bundle.batch_size(batch) / total
                loss = loss + share * nn.functional.cross_entropy(logits, batch["y"])
            return loss

        h = torch.autograd.functional.hessian(loss_of, w0)
        out[name] = float(h.reshape(w0.numel(), w0.numel()).diagonal().sum())
    return out


def test_exact_traces_match_dense_hessian_within_error():
    bundle = _tiny_mlp_bundle()
    names = ["0", "2", "4"]
    dense = _dense_block_traces(bundle, names)
    result = hessian_trace_result(bundle, names, tol=0.02, min_probes=20, max_probes=3000)
    for name in names:
        est = result.stats[name]
        assert abs(est.mean - dense[name]) <= 4 * est.stderr, (name, est.mean, est.stderr, dense[name])
        assert est.rel_error <= 0.02 or est.n == 3000


def test_shared_probes_are_unbiased_but_noisier():
    bundle = _tiny_mlp_bundle()
    names = ["0", "2", "4"]
    dense = _dense_block_traces(bundle, names)
    result = hessian_trace_result(bundle, names, mode="shared", tol=0.999, min_probes=400, max_probes=400)
    for name in names:
        est = result.stats[name]
        assert abs(est.mean - dense[name]) <= 4 * est.stderr
    assert result.hvps == 400 * len(bundle.calibration)  # one HVP per probe per batch, all layers


def test_agrees_with_pyhessian_on_digits_cnn(digits_bundle):
    layers = [layer for layer in discover_layers(digits_bundle) if layer.used]
    table = run_method("hawq_v2", digits_bundle, {"tol": 0.1, "min_probes": 8, "max_probes": 60},
                       choices=CHOICES, layers=layers)
    for layer in layers:
        ours = table.layer_stats[layer.name]
        ref: RunningMean = pyhessian_layer_trace(digits_bundle, layer.name, probes=30, seed=1)
        gap = abs(ours["trace"] - ref.mean)
        assert gap <= 4 * math.hypot(ours["trace_se"], ref.stderr), (layer.name, ours, ref.mean)
        # Ω = ½ · Tr/n · ‖ΔW‖², decreasing with bits (16 bits: fp16 storage rounding only)
        w = dict(digits_bundle.model.named_modules())[layer.name].weight
        expected = 0.5 * max(ours["trace"], 0) / layer.params * quantization_error(w, QuantConfig(4))
        assert table.omega[layer.name][(4, 16)] == pytest.approx(expected, rel=1e-9)
        assert table.omega[layer.name][(16, 16)] <= table.omega[layer.name][(8, 16)]
        assert table.omega[layer.name][(2, 16)] >= table.omega[layer.name][(8, 16)]
    assert table.meta["hvps"] == sum(s["probes"] for s in table.layer_stats.values())


def test_stopping_rule_uses_the_standard_error():
    stats = RunningMean()
    for x in (1.0, 1.1, 0.9, 1.0):
        stats.add(x)
    assert stats.n == 4 and stats.mean == pytest.approx(1.0)
    assert stats.stderr == pytest.approx(math.sqrt(0.02 / 3 / 4))
    assert stats.done(tol=0.05, min_probes=4, max_probes=100)
    assert not stats.done(tol=0.01, min_probes=4, max_probes=100)
    negative = RunningMean()
    for x in (-1.0, -1.2):
        negative.add(x)
    assert not negative.done(tol=0.05, min_probes=2, max_probes=100)  # |mean|: no early stop


@pytest.mark.parametrize("config", [HawqV2Config, FisherConfig,
                                    lambda **kw: InterlayerConfig(hessian=HawqV2Config(**kw))])
def test_bad_trace_params_raise(config):
    with pytest.raises(ValueError, match="tol"):
        config(tol=0)
    with pytest.raises(ValueError, match="min_probes <= max_probes"):
        config(min_probes=10, max_probes=5)
    with pytest.raises(ValueError, match="seed"):
        config(seed=1.5)
    with pytest.raises(ValueError, match="mode"):
        HawqV2Config(mode="nope")
