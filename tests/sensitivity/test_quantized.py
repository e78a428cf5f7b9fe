"""The job's provider of quantized weights (sensitivity.quantized) and the layer
inputs it quantizes from (sensitivity.layer_inputs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kernels.fake_quant import fake_quantize_weight, weight_quantization_error
from kernels.hessian import LayerHessian, input_rows
from kernels.scheme import QuantScheme
from sensitivity.bundle import ModelBundle
from sensitivity.layer_inputs import calibration_runs, collect_hessians, quantize_sequentially
from sensitivity.metrics import Metric
from sensitivity.quantized import QuantizedWeights

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny layers: one thread is faster


class Attention(nn.Module):
    """Q, K and V read the very same tensor, as in every transformer."""

    def __init__(self, d: int):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        att = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / x.shape[-1] ** 0.5, -1)
        return x + self.o(att @ self.v(x))


class TinyModel(nn.Module):
    def __init__(self, vocab=20, d=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.conv = nn.Conv1d(d, d, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm1d(d)
        self.att = Attention(d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, 5)

    def forward(self, ids):
        x = self.emb(ids)
        x = x + torch.relu(self.bn(self.conv(x.transpose(1, 2)))).transpose(1, 2)
        x = self.att(x)
        return self.fc2(torch.relu(self.fc1(x))).mean(1)


def tiny_bundle(batches=2) -> ModelBundle:
    torch.manual_seed(0)
    model = TinyModel()
    model.bn.momentum = None  # BatchNorm statistics of the data, as training leaves them
    with torch.no_grad():
        model.train()(torch.randint(0, 20, (512, 12)))
    model.bn.momentum = 0.1
    model.eval()
    data = [{"ids": torch.randint(0, 20, (24, 12))} for _ in range(batches)]
    for b in data:
        with torch.no_grad():
            b["target"] = model(b["ids"])

    def forward(m, b):
        return m(b["ids"])

    return ModelBundle(
        name="tiny", model=model, calibration=data, forward=forward,
        loss=lambda m, b: (forward(m, b) - b["target"]).pow(2).mean(),
        evaluate=lambda m: {}, metrics=[Metric("none", higher_is_better=True)])


LAYERS = ["emb", "conv", "att.q", "att.k", "att.v", "att.o", "fc1", "fc2"]


def inputs_of(model, bundle, name):
    seen = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        for b in bundle.calibration:
            bundle.forward(model, b)
    handle.remove()
    return seen


def test_rtn_is_the_plain_quantizer():
    bundle = tiny_bundle()
    qw = QuantizedWeights(bundle, QuantScheme(group_size=16))
    for name in LAYERS:
        module = bundle.model.get_submodule(name)
        for choice in ((2, 16), (4, 16), (16, 16)):
            config = QuantScheme(group_size=16).for_choice(choice)
            assert torch.equal(qw(name, choice), fake_quantize_weight(module, config))
            assert qw.error(name, choice) == weight_quantization_error(module, config)
    assert qw.apply({"fc1": (3, 16)}).quantized == {}


def test_hessians_over_all_batches_shared_by_layers_reading_one_tensor():
    bundle = tiny_bundle()
    names = ["conv", "att.q", "att.k", "att.v", "fc1"]
    hessians = collect_hessians(bundle.model, names, calibration_runs(bundle))
    assert hessians["att.q"] is hessians["att.k"] is hessians["att.v"]
    for name in ("att.q", "conv"):
        module = bundle.model.get_submodule(name)
        rows = torch.cat([input_rows(module, x) for x in inputs_of(bundle.model, bundle, name)])
        assert hessians[name].rows == rows.shape[0] == 2 * 24 * 12
        assert torch.allclose(hessians[name].xtx, rows.T @ rows, rtol=1e-4, atol=1e-3)


def test_sequential_inputs_see_the_earlier_layers_quantized():
    """Each layer's Hessian comes from the model with every earlier layer already
    replaced; Q/K/V are quantized in one pass, from one shared Hessian."""
    bundle = tiny_bundle()
    model = bundle.model
    original = {n: model.get_submodule(n).weight.detach().clone() for n in LAYERS}
    got: dict[str, LayerHessian] = {}
    expected: dict[str, torch.Tensor] = {}

    def quantize_layer(name, hessian):
        module = model.get_submodule(name)
        rows = torch.cat([input_rows(module, x) for x in inputs_of(model, bundle, name)])
        expected[name] = rows.T @ rows  # the inputs now, with the earlier layers changed
        got[name] = hessian
        with torch.no_grad():
            module.weight.mul_(0.5)  # "quantize"

    order = quantize_sequentially(model, LAYERS[1:], calibration_runs(bundle), quantize_layer)
    try:
        assert order == LAYERS[1:]
        assert got["att.q"] is got["att.k"] is got["att.v"]
        for name in order:
            assert torch.allclose(got[name].xtx, expected[name], rtol=1e-4, atol=1e-3), name
    finally:
        with torch.no_grad():
            for n, w in original.items():
                model.get_submodule(n).weight.copy_(w)


def test_a_layer_the_calibration_data_never_reaches_is_an_error():
    bundle = tiny_bundle()
    bundle.model.spare = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="never reaches spare"):
        quantize_sequentially(bundle.model, ["fc1", "spare"], calibration_runs(bundle),
                              lambda name, h: None)


def output_error(bundle, model) -> float:
    with torch.no_grad():
        return sum(float((bundle.forward(model, b) - b["target"]).pow(2).sum()) for b in bundle.calibration)


@pytest.mark.parametrize("algorithm", ["gptq", "adaquant"])
def test_calibrated_quantizers_against_rtn(algorithm):
    bundle = tiny_bundle()
    scheme = QuantScheme(group_size=16, algorithm=algorithm, adaquant_steps=20)
    qw = QuantizedWeights(bundle, scheme)
    rtn = QuantizedWeights(bundle, QuantScheme(group_size=16))
    assert not qw.calibrated("emb") and "embedding" in qw.rtn_notes()["emb"]
    assert qw.calibrated("conv") and qw.calibrated("att.q")
    # the embedding is rounded to nearest; the others are GPTQ / AdaQuant codes
    assert torch.equal(qw("emb", (3, 16)), rtn("emb", (3, 16)))
    assert not torch.equal(qw("fc1", (3, 16)), rtn("fc1", (3, 16)))
    assert qw.error("fc1", (3, 16)) == pytest.approx(float(qw.delta("fc1", (3, 16)).double().pow(2).sum()))
    choices = {n: (3, 16) for n in LAYERS}
    applied = qw.apply(choices)
    assert qw.apply(choices) is applied  # kept for the artifact
    assert set(applied.quantized) == set(LAYERS)
    assert applied.order == LAYERS[1:]
    for name, q in applied.quantized.items():
        assert int(q.codes.max()) <= 7 and q.config.bits == 3
        w = applied.model.get_submodule(name).weight
        assert torch.equal(w, q.dequantize(w.dtype).reshape(w.shape))
    err_rtn = output_error(bundle, rtn.apply(choices).model)
    err = output_error(bundle, applied.model)
    assert err < 0.8 * err_rtn, (err, err_rtn)
    bn, bn0 = applied.model.bn, bundle.model.bn
    if algorithm == "adaquant":  # global statistics tuning: BatchNorm and biases move
        assert not torch.allclose(bn.running_mean, bn0.running_mean)
        assert not torch.equal(applied.model.fc1.bias, bundle.model.fc1.bias)
        assert not bn.training
    else:
        assert torch.equal(bn.running_mean, bn0.running_mean)
        assert torch.equal(applied.model.fc1.bias, bundle.model.fc1.bias)


class Stacked(nn.Module):
    """An embedding, then a list of transformer-like blocks, then a head."""

    def __init__(self, d=16, depth=3):
        super().__init__()
        self.emb = nn.Embedding(20, d)
        self.blocks = nn.ModuleList(Attention(d) for _ in range(depth))
        self.head = nn.Linear(d, 4)

    def forward(self, ids):
        x = self.emb(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x).mean(1)


def test_block_by_block_equals_model_wide_passes(monkeypatch):
    """Keeping the hidden states between blocks changes the cost, not the result."""
    import sensitivity.layer_inputs as layer_inputs

    torch.manual_seed(0)
    model = Stacked().eval()
    data = [{"ids": torch.randint(0, 20, (6, 10))} for _ in range(2)]
    bundle = ModelBundle(name="stacked", model=model, calibration=data, forward=lambda m, b: m(b["ids"]),
                         loss=lambda m, b: m(b["ids"]).pow(2).mean(), evaluate=lambda m: {},
                         metrics=[Metric("none", higher_is_better=True)])
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    original = {n: model.get_submodule(n).weight.detach().clone() for n in names}

    def run():
        seen, calls = {}, [0]
        handle = model.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))

        def quantize_layer(name, hessian):
            seen[name] = hessian.xtx.clone()
            with torch.no_grad():
                model.get_submodule(name).weight.mul_(0.5)

        try:
            order = quantize_sequentially(model, names, calibration_runs(bundle), quantize_layer)
        finally:
            handle.remove()
            with torch.no_grad():
                for n, w in original.items():
                    model.get_submodule(n).weight.copy_(w)
        return order, seen, calls[0]

    order, blockwise, model_runs = run()
    monkeypatch.setattr(layer_inputs, "_find_blocks", lambda model, names: None)
    order_wide, wide, model_runs_wide = run()
    assert order == order_wide == names
    for name in names:
        assert torch.allclose(blockwise[name], wide[name], rtol=1e-5, atol=1e-5), name
    assert model_runs < model_runs_wide / 2, (model_runs, model_runs_wide)


def test_the_quantizer_calibration_feeds_gptq_and_only_it():
    """A bundle without `quantizer_calibration` quantizes from its calibration batches;
    with one, GPTQ's XᵀX (per layer and sequential) comes from those batches instead,
    and the cache key of a GPTQ table (not of an RTN one) depends on them."""
    import dataclasses
    from types import SimpleNamespace

    from sensitivity.cache import table_key

    plain = tiny_bundle()
    assert plain.quantizer_calibration is None and plain.quantizer_batches is plain.calibration
    gptq = QuantScheme(group_size=16, algorithm="gptq")
    assert QuantizedWeights(plain, gptq).hessian("fc1").rows == 2 * 24 * 12
    extra = [{"ids": torch.randint(0, 20, (40, 12), generator=torch.Generator().manual_seed(i))}
             for i in range(3)]
    more = dataclasses.replace(plain, quantizer_calibration=extra)
    weights = QuantizedWeights(more, gptq)
    assert weights.hessian("fc1").rows == weights.hessian("att.q").rows == 3 * 40 * 12
    rows = {}
    calibrate = weights._calibrate
    weights._calibrate = lambda n, m, h, c: (rows.__setitem__(n, h.rows), calibrate(n, m, h, c))[1]
    weights.apply({"att.q": (3, 16), "fc1": (3, 16)})
    assert rows == {"att.q": 3 * 40 * 12, "fc1": 3 * 40 * 12}

    layers = [SimpleNamespace(name=n) for n in LAYERS]
    choices = [(3, 16), (16, 16)]
    rtn = QuantScheme(group_size=16)
    assert table_key("fisher", plain, layers, choices, rtn, {}) == \
        table_key("fisher", more, layers, choices, rtn, {})
    assert table_key("fisher", plain, layers, choices, gptq, {}) != \
        table_key("fisher", more, layers, choices, gptq, {})
    other = dataclasses.replace(plain, quantizer_calibration=extra[:2])
    assert table_key("fisher", more, layers, choices, gptq, {}) != \
        table_key("fisher", other, layers, choices, gptq, {})
