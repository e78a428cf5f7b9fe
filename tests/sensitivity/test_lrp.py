"""LRP: relevance is conserved layer to layer, on captum's rules and on the
modified-gradient rules, and Ω follows R_l · ‖ΔW‖² / ‖W‖²."""

import pytest
import torch
from sens_models import tiny_cnn, tiny_mlp
from sens_run import run_method
from torch import nn

from kernels.quantizer import quantization_error
from kernels.scheme import QuantConfig
from sensitivity.layers import discover_layers
from sensitivity.lrp import captum_rules, modified_gradient


def _names(bundle):
    return [layer.name for layer in discover_layers(bundle) if layer.used]


@pytest.mark.parametrize("make", [lambda: tiny_mlp(bias=False, act=nn.ReLU),
                                  lambda: tiny_cnn(bias=False, bn=False)])
@pytest.mark.parametrize("rules", ["captum", "modified_gradient"])
def test_relevance_is_conserved_without_biases(make, rules):
    """Bias-free ReLU nets: every layer's relevance sums to the output relevance."""
    bundle = make()
    names = _names(bundle)
    batch = bundle.calibration[0]
    if rules == "captum":
        rel = captum_rules.batch_relevance(bundle, captum_rules.canonize(bundle.model), batch, names)
    else:
        rel = modified_gradient.batch_relevance(bundle, batch, names, eps=1e-9)
    for name in names:
        assert rel.signed[name] == pytest.approx(rel.output, rel=1e-3), (name, rel.signed, rel.output)


def test_captum_canonization_folds_batchnorm_and_keeps_outputs(digits_bundle):
    gm = captum_rules.canonize(digits_bundle.model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    x = digits_bundle.calibration[0]["x"][:32]
    with torch.no_grad():
        assert torch.allclose(gm(x), digits_bundle.model(x), atol=1e-4)
    assert any(isinstance(m, nn.BatchNorm2d) for m in digits_bundle.model.modules())  # original intact


def test_lrp_table_on_digits_cnn(digits_bundle):
    layers = [layer for layer in discover_layers(digits_bundle) if layer.used]
    table = run_method("lrp", digits_bundle, layers=layers)
    assert table.meta["rules"] == "captum"
    r = {n: s["relevance"] for n, s in table.layer_stats.items()}
    assert sum(r.values()) == pytest.approx(1.0) and all(v > 0 for v in r.values())
    # the classifier head sees the output relevance undiminished
    assert table.layer_stats["fc2"]["conservation"] == pytest.approx(1.0, rel=1e-3)
    w = dict(digits_bundle.model.named_modules())["fc1"].weight
    expected = r["fc1"] * quantization_error(w, QuantConfig(4)) / float(w.double().pow(2).sum())
    assert table.omega["fc1"][(4, 16)] == pytest.approx(expected, rel=1e-9)


def test_transformer_relevance_is_conserved_through_the_residual_stream(minilm_bundle):
    """Held-constant attention, identity LayerNorm/GELU: the relevance of each
    encoder block's output stays near the output relevance (biases and the
    epsilon rule absorb a little)."""
    blocks = [f"encoder.layer.{k}.output" for k in range(6)]
    batch = {k: v[:4] for k, v in minilm_bundle.calibration[0].items()}
    rel = modified_gradient.batch_relevance(minilm_bundle, batch, blocks + ["embeddings"], eps=1e-6)
    assert rel.output == pytest.approx(4.0, rel=1e-4)  # 4 unit embeddings dotted with themselves
    for name in blocks + ["embeddings"]:
        assert rel.signed[name] == pytest.approx(rel.output, rel=0.15), (name, rel.signed[name])


def test_lrp_params_are_checked():
    bundle = tiny_mlp()
    layers = [layer for layer in discover_layers(bundle) if layer.used]
    with pytest.raises(ValueError, match="accepted: rules, eps"):
        run_method("lrp", bundle, {"rule": "x"}, layers=layers)
    with pytest.raises(ValueError, match="rules must be"):
        run_method("lrp", bundle, {"rules": "zennit"}, layers=layers)
    with pytest.raises(ValueError, match="eps must be a number > 0"):
        run_method("lrp", bundle, {"eps": True}, layers=layers)
