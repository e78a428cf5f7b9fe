"""apply_allocation: the packed model computes the fake-quantized model's function."""

import copy

import pytest
import torch
from torch import nn

from kernels.apply import PACKED_TYPES, apply_allocation
from kernels.fake_quant import fake_quantize_model
from kernels.modules import QuantConv, QuantEmbedding, QuantLinear
from kernels.scheme import QuantConfig


def test_digits_cnn_matches_fake_quant(digits_bundle, digits_packed):
    configs, packed = digits_packed
    x = digits_bundle.calibration[0]["x"]
    with torch.no_grad():
        expected = fake_quantize_model(digits_bundle.model, configs)(x)
        got = packed(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_minilm_matches_fake_quant(minilm_bundle, minilm_packed):
    configs, packed = minilm_packed
    batch = minilm_bundle.calibration[0]
    with torch.no_grad():
        expected = minilm_bundle.forward(fake_quantize_model(minilm_bundle.model, configs), batch)
        got = minilm_bundle.forward(packed, batch)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_layers_are_packed_at_their_own_width(digits_bundle, digits_packed):
    configs, packed = digits_packed
    modules = dict(packed.named_modules())
    original = dict(digits_bundle.model.named_modules())
    for name, config in configs.items():
        if config.quantized:
            assert isinstance(modules[name], (QuantConv, QuantLinear)) and \
                modules[name].config == config
        else:  # 16-bit: the float layer, its weight rounded to fp16 values
            assert type(modules[name]) is type(original[name])
            assert torch.equal(modules[name].weight, original[name].weight.half().float())
    assert not any(isinstance(m, PACKED_TYPES) for m in digits_bundle.model.modules())


def test_minilm_embeddings_are_packed(minilm_packed):
    _, packed = minilm_packed
    assert isinstance(packed.embeddings.word_embeddings, QuantEmbedding)


def test_applying_twice_keeps_packed_layers(digits_packed):
    configs, packed = digits_packed
    again = apply_allocation(packed, configs)
    assert torch.equal(again.fc1.qweight, packed.fc1.qweight)
    other = {**configs, "fc1": QuantConfig(8)}
    with pytest.raises(ValueError, match="already packed"):
        apply_allocation(packed, other)


def test_bad_allocations_are_rejected(digits_bundle):
    model = digits_bundle.model
    with pytest.raises(ValueError, match="no such layer"):
        apply_allocation(model, {"fc9": QuantConfig(4)})
    with pytest.raises(ValueError, match="stem.1: BatchNorm2d is not quantizable"):
        apply_allocation(model, {"stem.1": QuantConfig(4)})
    with pytest.raises(ValueError, match="QuantConfig"):
        apply_allocation(model, {"fc1": 4})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_digits_cnn_on_gpu_runs_the_kernels(digits_bundle, digits_packed, dtype):
    configs, packed = digits_packed
    x = digits_bundle.calibration[0]["x"][:1].to("cuda", dtype)  # one row: the GEMV path
    fake = fake_quantize_model(digits_bundle.model, configs).to("cuda", dtype)
    packed = copy.deepcopy(packed).to("cuda", dtype)
    with torch.no_grad():
        torch.testing.assert_close(packed(x).float(), fake(x).float(), rtol=3e-2, atol=5e-2)
        xs = digits_bundle.calibration[0]["x"][:16].to("cuda", dtype)  # the GEMM path
        torch.testing.assert_close(packed(xs).float(), fake(xs).float(), rtol=3e-2, atol=5e-2)


def test_float_layers_outside_the_allocation_are_untouched(digits_bundle):
    packed = apply_allocation(digits_bundle.model, {"fc2": QuantConfig(4, 32)})
    assert isinstance(packed.fc2, QuantLinear)
    assert isinstance(packed.fc1, nn.Linear)
    assert torch.equal(packed.fc1.weight, digits_bundle.model.fc1.weight)
