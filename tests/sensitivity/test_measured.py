"""empirical and interlayer: measured values against direct evaluation, second-order
pair terms against the dense Hessian's cross blocks."""

import pytest
import torch
from sens_dense import Dense
from sens_models import tiny_cnn, tiny_mlp
from sens_run import CHOICES, run_method
from sens_run import used_layers as _layers

from kernels.fake_quant import fake_quantize_model
from kernels.quantizer import fake_quantize
from kernels.scheme import QuantConfig, QuantScheme
from sensitivity.estimators.interlayer import neighbour_pairs


def _loss(bundle, model) -> float:
    total = sum(bundle.batch_size(b) for b in bundle.calibration)
    with torch.no_grad():
        return sum(float(bundle.loss(model, b)) * bundle.batch_size(b) / total for b in bundle.calibration)


def test_empirical_equals_direct_evaluation():
    bundle = tiny_mlp()
    layers = _layers(bundle)
    table = run_method("empirical", bundle, scheme=QuantScheme(group_size=4), layers=layers)
    base = _loss(bundle, bundle.model)
    for layer in layers:
        for bits, a in CHOICES:
            q = fake_quantize_model(bundle.model, {layer.name: QuantConfig(bits, group_size=4)})
            assert table.omega[layer.name][(bits, a)] == pytest.approx(_loss(bundle, q) - base, abs=1e-7)
    assert _loss(bundle, bundle.model) == base  # weights restored


def test_interlayer_hessian_pairs_match_dense_cross_blocks():
    bundle = tiny_cnn()
    layers = _layers(bundle)
    names = [layer.name for layer in layers]
    quant = QuantScheme(group_size=8)
    table = run_method("interlayer", bundle, {"window": 1, "max_probes": 8}, scheme=quant, layers=layers)
    dense = Dense(bundle, names)
    h = dense.hessian()
    modules = dict(bundle.model.named_modules())

    def delta(name, bits):
        w = modules[name].weight
        return (fake_quantize(w, QuantConfig(bits, quant.group_size)) - w).detach().double().reshape(-1)

    assert set(table.pairs) == {(names[i], names[j]) for i, j in neighbour_pairs(len(names), 1)}
    for (a, b), vals in table.pairs.items():
        i, j = names.index(a), names.index(b)
        for ca in CHOICES:
            for cb in CHOICES:
                ref = float(delta(a, ca[0]) @ dense.block(h, i, j) @ delta(b, cb[0]))
                assert vals[(ca, cb)] == pytest.approx(ref, rel=1e-4, abs=1e-12), (a, b, ca, cb)
    assert table.omega[names[0]][(2, 16)] > 0 and table.meta["pair_hvps"] > 0


def test_interlayer_measured_pairs_equal_direct_evaluation():
    bundle = tiny_mlp()
    layers = _layers(bundle)
    names = [layer.name for layer in layers]
    quant = QuantScheme(group_size=4)
    table = run_method("interlayer", bundle, {"window": 2, "pairs": "measured"}, scheme=quant, layers=layers)
    assert len(table.pairs) == 3  # (0,2), (0,4), (2,4)
    base = _loss(bundle, bundle.model)

    def loss_at(assign):
        cfg = {n: QuantConfig(b, group_size=4) for n, b in assign.items()}
        return _loss(bundle, fake_quantize_model(bundle.model, cfg))

    a, b = names[0], names[2]
    for ca, cb in [((2, 16), (4, 16)), ((4, 16), (2, 16))]:
        ref = loss_at({a: ca[0], b: cb[0]}) - loss_at({a: ca[0]}) - loss_at({b: cb[0]}) + base
        assert table.pairs[(a, b)][(ca, cb)] == pytest.approx(ref, abs=1e-7)
        # per-layer terms are measured too: Ω_a + Ω_b + G_ab is the loss change of both
        both = table.omega[a][ca] + table.omega[b][cb] + table.pairs[(a, b)][(ca, cb)]
        assert both == pytest.approx(loss_at({a: ca[0], b: cb[0]}) - base, abs=1e-7)
    with pytest.raises(ValueError, match="max_probes do not apply"):
        run_method("interlayer", bundle, {"pairs": "measured", "max_probes": 8}, scheme=quant, layers=layers)
