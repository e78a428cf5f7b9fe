"""The integer path of packed linear layers with quantized inputs (kernels.int8, issue #17):
int8 × int8 → int32 products whose accumulators equal the fake-quantized computation's
integers exactly, an output within float rounding of the fake-quantized float layer, codes in
range, and a real job's W8A8 artifact computing through it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kernels.modules as modules_mod
from kernels.activation import ActivationQuantizer, attach, calibrate, code_range, make_quantizer
from kernels.apply import apply_allocation
from kernels.fake_quant import fake_quantize_model
from kernels.int8 import IntWeight, accumulators, int8_linear, int_matmul, quantize_input
from kernels.modules import QuantLinear
from kernels.packed_weight import pack_weight, symmetric_zero
from kernels.quantizer import quantize
from kernels.scheme import ActivationScheme, QuantConfig

HAS_CUDA = torch.cuda.is_available()
GPU = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]

# (weight bits, group size, symmetric): per group (K = 80: a partial last group at 32) and
# per channel (g >= K)
WEIGHTS = [(8, 32, True), (8, 32, False), (8, 128, True), (8, 128, False), (4, 32, True),
           (4, 128, False)]
INPUTS = {
    "dynamic-sym": lambda b: ActivationQuantizer(b, "dynamic", True, -1),
    "dynamic-asym": lambda b: ActivationQuantizer(b, "dynamic", False, -1),
    "static-sym": lambda b: ActivationQuantizer(b, "static", True, -1, 0.05 * 127 / (2 ** (b - 1) - 1), 0.0),
    "static-asym": lambda b: ActivationQuantizer(b, "static", False, -1, 0.04 * 255 / (2**b - 1),
                                                 float(2 ** (b - 1) + 3)),
}


def _operands(wb, g, sym, seed=0, m=7, k=80, n=24):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    x = torch.randn(m, k, generator=gen) * 2.0
    return x, w, QuantConfig(wb, g, sym)


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 10, 5), (17, 32, 16), (2, 300, 7)])
def test_int_matmul_is_exact(shape):
    m, k, n = shape
    gen = torch.Generator().manual_seed(k)
    a = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    out = int_matmul(a, b.T)  # the column-major operand, as the layers pass it
    assert out.dtype == torch.int32 and torch.equal(out.long(), a.long() @ b.long().T)
    with pytest.raises(ValueError, match="int8"):
        int_matmul(a.float(), b.T)


@pytest.mark.parametrize("weights", WEIGHTS, ids=lambda t: f"w{t[0]}g{t[1]}{'s' if t[2] else 'a'}")
@pytest.mark.parametrize("inputs", list(INPUTS))
@pytest.mark.parametrize("a_bits", [8, 4])
def test_accumulators_are_the_fake_quantized_integers_and_the_output_matches(weights, inputs, a_bits,
                                                                            check_reference):
    wb, g, sym = weights
    x, w, config = _operands(wb, g, sym)
    q = INPUTS[inputs](a_bits)
    packed = pack_weight(w, config)
    iw = IntWeight.from_packed(packed)
    # codes in range: the input's own, and int8 after the offsets
    codes_a, scale_a, zero_a = q.quantize(x)
    lo, hi = code_range(a_bits, q.symmetric)
    assert int(codes_a.min()) >= lo and int(codes_a.max()) <= hi
    codes8, zero8, _ = quantize_input(x, q)
    assert codes8.dtype == torch.int8 and iw.codes.dtype == torch.int8
    assert -(2 ** (wb - 1)) <= int(iw.codes.min()) and int(iw.codes.max()) < 2 ** (wb - 1)
    assert -(2 ** (a_bits - 1)) <= int(codes8.min()) and int(codes8.max()) < 2 ** (a_bits - 1)
    # the integer accumulate, exactly: Σ_k∈group (c_a − z_a)(c_w − z_w), in float64
    qw = quantize(w, config)
    acc = accumulators(codes8, zero8, iw)
    da = codes_a.double() - zero_a.double()
    dw = qw.codes.double() - torch.repeat_interleave(qw.zeros.double(), g, dim=1)[:, :w.shape[1]]
    assert acc.shape[0] == -(-w.shape[1] // min(g, w.shape[1]))
    for i, (a, b) in enumerate(iw.groups):
        assert torch.equal(acc[i].double(), da[:, a:b] @ dw[:, a:b].T)
    # the rescaled output: the fake-quantized float layer, within float rounding
    bias = torch.randn(w.shape[0])
    y = int8_linear(x, q, iw, bias)
    check_reference(y, q.fake_quantize(x), packed.dequantize(torch.float64), bias)
    torch.testing.assert_close(y, F.linear(q.fake_quantize(x), packed.dequantize(), bias),
                               rtol=1e-5, atol=1e-4)


def test_a_group_too_long_for_int32_is_refused():
    x, w, _ = _operands(8, 128, True, k=140_000, m=1, n=1)
    iw = IntWeight.from_packed(pack_weight(w, QuantConfig(8, 140_000, True)))
    q = ActivationQuantizer(8, "dynamic", True, -1)
    with pytest.raises(ValueError, match="overflow"):
        int8_linear(x, q, iw)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 64), nn.GELU(), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, 10)).eval()


@pytest.mark.parametrize("scheme", [ActivationScheme(), ActivationScheme(mode="dynamic", symmetric=True),
                                    ActivationScheme(range="mse", symmetric=True)],
                         ids=["static-asym", "dynamic-sym", "static-mse-sym"])
def test_packed_model_with_input_quantizers_computes_in_integers(scheme, monkeypatch):
    model = _mlp()
    names = ["0", "2", "4"]
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(16, 40, generator=gen) for _ in range(3)]
    stats = calibrate(model, names, [lambda m, x=x: m(x) for x in xs])
    modules = dict(model.named_modules())
    widths = {"0": (8, 8), "2": (4, 8), "4": (8, 4)}
    quantizers = {n: make_quantizer(widths[n][1], scheme, modules[n], stats[n]) for n in names}
    configs = {n: QuantConfig(widths[n][0], 32) for n in names}
    packed = apply_allocation(model, configs, activations=quantizers)
    assert all(isinstance(packed.get_submodule(n), QuantLinear) and packed.get_submodule(n).integer_path
               for n in names)
    assert not any(m._forward_pre_hooks for m in packed.modules())  # no hooks: the layers do it
    reference = fake_quantize_model(model, configs)
    attach(reference, quantizers)
    calls = []
    real = modules_mod.int8_linear
    monkeypatch.setattr(modules_mod, "int8_linear", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(5, 3, 40, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), reference(x), rtol=1e-4, atol=1e-4)
    assert len(calls) == 3
    # deep copies keep the quantizers; a changed weight is unpacked again
    clone = copy.deepcopy(packed)
    assert clone.get_submodule("0").input_quantizer == quantizers["0"]
    layer = packed.get_submodule("0")
    before = layer.int_weight()
    with torch.no_grad():
        layer.qweight.zero_()
    assert layer.int_weight() is not before


def test_a_16_bit_input_keeps_the_weight_only_path():
    layer = QuantLinear.from_linear(nn.Linear(16, 8), QuantConfig(8, 16))
    assert not layer.integer_path
    layer.quantize_inputs(ActivationQuantizer(8, "dynamic", True, -1))
    assert layer.integer_path and "a_bits=8" in repr(layer)
    with pytest.raises(ValueError, match="last dimension"):
        layer.quantize_inputs(ActivationQuantizer(8, "dynamic", True, 1))


@pytest.fixture(scope="module")
def w8a8_job(tmp_path_factory):
    """A real job on digits-vit (all Linear layers) at W8A8: 8-bit weights, 8-bit inputs with
    static min/max ranges calibrated by the job, written as bitalloc's artifact."""
    from sensitivity.models import load_model
    from workers.pipeline import run_job
    from workers.spec import JobSpec

    spec = JobSpec.model_validate({
        "model": "digits-vit", "method": "fisher",
        "method_params": {"tol": 0.25, "min_probes": 4, "max_probes": 8},
        "weight_bits": [8], "activation_bits": [8], "budgets": {"bops": 1e12}, "pareto_points": 0,
    })
    folder = tmp_path_factory.mktemp("w8a8-artifact")
    return spec, run_job(spec, artifact_dir=folder), folder, load_model("digits-vit")


def test_a_jobs_w8a8_artifact_runs_through_the_integer_path(w8a8_job, monkeypatch):
    from kernels.artifact import load_artifact
    from sensitivity.models.digits_vit import DigitsViT
    from sensitivity.quantized import QuantizedWeights

    spec, result, folder, bundle = w8a8_job
    assert {(layer.w_bits, layer.a_bits) for layer in result.layers} == {(8, 8)}
    model = load_artifact(folder, DigitsViT)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert set(linears) == {layer.name for layer in result.layers}
    assert all(m.integer_path and m.input_quantizer.bits == 8 for m in linears.values())
    assert not any(m._forward_pre_hooks for m in model.modules())
    calls = []
    real = modules_mod.int8_linear
    monkeypatch.setattr(modules_mod, "int8_linear", lambda *a: calls.append(1) or real(*a))
    quality = bundle.evaluate(model)
    assert calls  # the evaluation ran the integer kernels
    assert quality["accuracy"] == pytest.approx(result.quality.allocation["accuracy"], abs=0.2)
    assert quality["test_loss"] == pytest.approx(result.quality.allocation["test_loss"], rel=1e-3)
    # against the job's own fake-quantized model (weights, and the inputs by pre-hooks), layer
    # by layer on the same inputs: end to end, float rounding a few ulps apart moves some of the
    # next layer's inputs across a rounding boundary of its quantizer (one code step)
    scheme = spec.quant.scheme()
    reference = QuantizedWeights(bundle, scheme).apply({n: (8, 8) for n in linears}).model
    ref_modules = dict(reference.named_modules())
    inputs = {}
    handles = [ref_modules[n].register_forward_pre_hook(
        lambda m, args, n=n: inputs.__setitem__(n, args[0].detach()), prepend=True) for n in linears]
    x = next(iter(bundle.calibration))["x"]
    with torch.no_grad():
        logits = reference(x)
        for h in handles:
            h.remove()
        for name, layer in linears.items():
            torch.testing.assert_close(layer(inputs[name]), ref_modules[name](inputs[name]),
                                       rtol=1e-5, atol=1e-5)
        assert (model(x).argmax(-1) == logits.argmax(-1)).float().mean() > 0.98


# (weight bits, group, symmetric weight, input): groups of 32 and 64 over K = 96 (a partial
# last group at 64), per channel (g = K = 96, not a multiple of the 32-wide K tile)
TRITON_CASES = [(8, 32, True, "dynamic-sym"), (8, 64, False, "static-asym"),
                (4, 96, False, "dynamic-asym"), (8, 96, True, "static-sym")]


@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: f"w{c[0]}g{c[1]}{'s' if c[2] else 'a'}-{c[3]}")
def test_the_triton_w8a8_kernel_equals_the_int_mm_path(triton_kernels, case):
    """The fused kernel (compiled on CUDA, interpreted on the CPU) against `int8_linear`'s
    torch path, which the tests above hold to the fake-quantized integers."""
    wb, g, sym, inputs = case
    x, w, config = _operands(wb, g, sym, m=5, k=96, n=40)
    q = INPUTS[inputs](8)
    iw = IntWeight.from_packed(pack_weight(w, config))
    codes, zero, scale = quantize_input(x, q)
    bias = torch.randn(40)
    dev = triton_kernels.device
    y = triton_kernels.w8a8(codes.to(dev), scale.reshape(-1).to(dev),
                            None if zero is None else zero.reshape(-1).to(dev), iw.codes.to(dev),
                            iw.scales.to(dev), None if iw.zeros is None else iw.zeros.to(dev),
                            iw.colsums.to(dev), bias.to(dev), iw.group_size)
    torch.testing.assert_close(y.cpu(), int8_linear(x, q, iw, bias), rtol=1e-6, atol=1e-5)


def test_groups_the_triton_kernel_does_not_take_stay_on_int_mm():
    pytest.importorskip("triton")
    from kernels.triton_w8a8 import MAX_GROUP, MIN_GROUP, supports

    assert supports(MIN_GROUP) and supports(MAX_GROUP) and not supports(16)
    assert not supports(MAX_GROUP + 1)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("shape", [(1, 10, 5), (3, 80, 24), (33, 256, 64)])
def test_the_gpu_paths_equal_the_cpu(shape):
    """int_mm with its CUDA padding, and int8_linear (the fused kernel where the groups allow,
    int_mm otherwise) on the GPU against the CPU."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(m)
    a = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    assert torch.equal(int_matmul(a.cuda(), b.cuda().T).cpu(), int_matmul(a, b.T))
    x, w, config = _operands(8, 32, True, m=m, k=k, n=n)
    q = ActivationQuantizer(8, "dynamic", True, -1)
    packed = pack_weight(w, config)
    y_cpu = int8_linear(x, q, IntWeight.from_packed(packed))
    y_gpu = int8_linear(x.cuda(), q, IntWeight.from_packed(packed.to("cuda")))
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=1e-5, atol=1e-4)


def test_symmetric_weight_codes_are_signed_values():
    w = torch.randn(4, 16)
    packed = pack_weight(w, QuantConfig(8, 16, True))
    iw = IntWeight.from_packed(packed)
    assert iw.zeros is None
    q = quantize(w, QuantConfig(8, 16, True))
    assert torch.equal(iw.codes.long(), q.codes.long() - symmetric_zero(8))
