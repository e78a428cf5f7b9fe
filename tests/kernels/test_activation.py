"""The activation quantizer (kernels.activation): codes in range, error falling with bits,
calibrated static ranges (min/max, percentile, MSE), dynamic per-token ranges, hooks."""

import copy

import pytest
import torch
from torch import nn

from kernels.activation import (
    ActivationQuantizer,
    attach_records,
    calibrate,
    code_range,
    make_quantizer,
    quantized_inputs,
    squared_error,
)
from kernels.scheme import ActivationScheme, QuantScheme

A_BITS = [4, 6, 8]
SCHEMES = [ActivationScheme(mode, rng, sym) for mode, rng in
           [("static", "minmax"), ("static", "percentile"), ("static", "mse"), ("dynamic", "minmax")]
           for sym in (False, True)]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 3)).eval()


def _runs(n=3):
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(8, 2, 5, 5, generator=gen) * (1 + i) for i in range(n)]
    return [lambda m, x=x: m(x) for x in xs], xs


@pytest.fixture(scope="module")
def stats():
    model = _model()
    runs, _ = _runs()
    return model, calibrate(model, ["0", "3"], runs)


@pytest.mark.parametrize("scheme", SCHEMES,
                         ids=lambda s: f"{s.mode}-{s.range}-{'sym' if s.symmetric else 'asym'}")
def test_codes_in_range_and_error_falls_with_bits(stats, scheme):
    model, st = stats
    modules = dict(model.named_modules())
    x = torch.randn(6, 2, 5, 5) * 3
    errors = []
    for bits in A_BITS:
        q = make_quantizer(bits, scheme, modules["0"], st["0"])
        codes, scale, zero = q.quantize(x)
        lo, hi = code_range(bits, scheme.symmetric)
        assert codes.dtype == torch.int32 and int(codes.min()) >= lo and int(codes.max()) <= hi
        assert torch.allclose((codes - zero) * scale, q.fake_quantize(x))
        errors.append(squared_error(q, x))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_minmax_range_is_the_calibration_range_and_zero_is_exact(stats):
    model, st = stats
    _, xs = _runs()
    allx = torch.cat([x.reshape(-1) for x in xs])
    assert st["0"].lo == pytest.approx(float(allx.min())) and st["0"].hi == pytest.approx(float(allx.max()))
    q = st["0"].quantizer(8, ActivationScheme())
    assert q.scale == pytest.approx((st["0"].hi - st["0"].lo) / 255, rel=1e-3)
    assert float(q.fake_quantize(torch.zeros(3))[0]) == 0.0
    # inputs inside the calibrated range are off by at most half a step
    inside = allx[:1000]
    assert float((q.fake_quantize(inside) - inside).abs().max()) <= q.scale / 2 + 1e-6


def test_clipping_ranges_are_tighter_and_mse_minimises_the_error(stats):
    model, st = stats
    s = st["0"]
    lo_p, hi_p = s.range(4, ActivationScheme(range="percentile", percentile=99.0))
    assert s.lo < lo_p < hi_p < s.hi
    mse = s.quantizer(4, ActivationScheme(range="mse"))
    minmax = s.quantizer(4, ActivationScheme())
    x = s.samples
    assert squared_error(mse, x) <= squared_error(minmax, x) + 1e-9
    assert mse.scale <= minmax.scale + 1e-12


def test_dynamic_per_token_ranges(stats):
    model, _ = stats
    modules = dict(model.named_modules())
    lin = make_quantizer(8, ActivationScheme(mode="dynamic"), modules["3"])
    x = torch.randn(5, 100)
    x[0] *= 100  # one loud token does not coarsen the others
    _, scale, zero = lin.quantize(x)
    assert scale.shape == (5, 1) and float(scale[0]) > 50 * float(scale[1:].max())
    conv = make_quantizer(8, ActivationScheme(mode="dynamic"), modules["0"])
    _, scale, _ = conv.quantize(torch.randn(2, 2, 5, 5))
    assert scale.shape == (2, 1, 5, 5)  # per position, over the channels


def test_hooks_quantize_the_inputs_and_records_round_trip(stats):
    model, st = stats
    x = torch.randn(4, 2, 5, 5)
    q = st["3"].quantizer(4, ActivationScheme())
    ref = model(x)
    with torch.no_grad():
        h = model[2](model[1](model[0](x)))
        expected = model[3](q.fake_quantize(h))
    with quantized_inputs(model, {"3": q}):
        got = model(x)
    assert torch.allclose(got, expected) and not torch.allclose(got, ref)
    assert torch.equal(model(x), ref)  # removed after
    handles = attach_records(model, {"3": q.record()})
    assert torch.allclose(model(x), expected)
    for handle in handles:
        handle.remove()
    assert ActivationQuantizer.from_record(q.record()) == q


def test_scheme_validation_and_defaults():
    with pytest.raises(ValueError, match="mode 'static'"):
        ActivationScheme(mode="dynamic", range="mse")
    with pytest.raises(ValueError, match="range"):
        ActivationScheme(range="max")
    with pytest.raises(ValueError, match="activation bits"):
        ActivationQuantizer(5, "dynamic", False, -1)
    assert QuantScheme().activation == ActivationScheme()
    assert "activation" not in QuantScheme().as_dict()  # the weight grid's key is unchanged
    assert "percentile" not in ActivationScheme().as_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("scheme", [ActivationScheme(), ActivationScheme(mode="dynamic", symmetric=True)])
def test_quantizers_run_on_the_gpu_as_on_the_cpu(stats, scheme):
    model, st = stats
    q = make_quantizer(4, scheme, dict(model.named_modules())["3"], st["3"])
    x = torch.randn(7, 100)
    assert torch.allclose(q.fake_quantize(x.cuda()).cpu(), q.fake_quantize(x), atol=1e-6)
    gpu = copy.deepcopy(model).cuda()
    with quantized_inputs(gpu, {"3": q}), quantized_inputs(model, {"3": q}):
        xi = torch.randn(3, 2, 5, 5)
        assert torch.allclose(gpu(xi.cuda()).cpu(), model(xi), atol=1e-5)
