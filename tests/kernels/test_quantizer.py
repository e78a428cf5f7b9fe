"""Property tests of the quantizer (DESIGN §3)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.quantizer import fake_quantize, quantization_error, quantize
from kernels.scheme import QuantConfig, bits_per_weight, weight_bits

QUANT_BITS = [2, 3, 4, 5, 6, 8]

weights = st.builds(
    lambda rows, k, seed, scale: torch.randn(rows, k, generator=torch.Generator().manual_seed(seed)) * scale,
    rows=st.integers(1, 6), k=st.integers(64, 300), seed=st.integers(0, 10_000),
    scale=st.sampled_from([1e-3, 0.05, 1.0, 30.0]),
)
configs = st.builds(
    QuantConfig, bits=st.sampled_from(QUANT_BITS), group_size=st.sampled_from([16, 32, 64, 128]),
    symmetric=st.booleans(), mse_clip=st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(w=weights, symmetric=st.booleans(), mse_clip=st.booleans(), g=st.sampled_from([32, 128]))
def test_error_falls_as_bits_rise(w, symmetric, mse_clip, g):
    errors = [quantization_error(w, QuantConfig(b, g, symmetric, mse_clip)) for b in QUANT_BITS]
    assert all(hi > lo for hi, lo in zip(errors, errors[1:])), errors


@settings(max_examples=60, deadline=None)
@given(w=weights, config=configs, conv=st.booleans())
def test_error_is_the_distance_to_the_fake_quantized_weight(w, config, conv):
    """quantization_error's group-layout shortcut equals ‖Q(W) − W‖² (partial groups too)."""
    if conv:  # a conv weight, flattened along K like the kernels do
        w = w[:, : w.shape[1] // 9 * 9].reshape(w.shape[0], -1, 3, 3)
    direct = float((fake_quantize(w, config).double() - w.double()).pow(2).sum())
    assert quantization_error(w, config) == pytest.approx(direct, rel=1e-5, abs=1e-30)
    half = w.half()
    assert quantization_error(half, config) == pytest.approx(
        float((fake_quantize(half, config).double() - half.double()).pow(2).sum()), rel=1e-9, abs=1e-30)


@settings(max_examples=60, deadline=None)
@given(w=weights, config=configs)
def test_quantize_dequantize_is_idempotent(w, config):
    once = fake_quantize(w, config)
    twice = fake_quantize(once, config)
    step = quantize(w, config).scales.float().max()
    torch.testing.assert_close(twice, once, atol=float(step) * 1e-3, rtol=0)


@settings(max_examples=60, deadline=None)
@given(w=weights, config=configs)
def test_codes_and_zeros_stay_in_range(w, config):
    q = quantize(w, config)
    top = 2**config.bits - 1
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) <= top
    assert int(q.zeros.max()) <= top
    assert q.codes.shape == w.shape and q.scales.shape == q.zeros.shape
    assert q.scales.shape[1] == math.ceil(w.shape[1] / min(config.group_size, w.shape[1]))


@settings(max_examples=60, deadline=None)
@given(w=weights, config=configs)
def test_error_within_half_a_step_inside_the_clip_range(w, config):
    q = quantize(w, config)
    g = min(config.group_size, w.shape[1])
    scale = q.scales.float().repeat_interleave(g, 1)[:, : w.shape[1]]
    zero = q.zeros.float().repeat_interleave(g, 1)[:, : w.shape[1]]
    lo, hi = (config.min_code - zero) * scale, (2**config.bits - 1 - zero) * scale
    inside = (w >= lo) & (w <= hi)
    err = (q.dequantize() - w).abs()
    assert inside.any()
    assert bool((err[inside] <= scale[inside] / 2 * (1 + 1e-4) + 1e-7).all())


def test_bits_per_weight_counts_scale_and_zero_overhead():
    assert bits_per_weight((256, 1024), QuantConfig(4, 128)) == pytest.approx(4 + 20 / 128)
    assert bits_per_weight((256, 1024), QuantConfig(4, 128, symmetric=True)) == pytest.approx(4.125)
    assert bits_per_weight((10, 64), QuantConfig(8, 128)) == pytest.approx(8 + 24 / 64)  # per channel
    assert bits_per_weight((3, 300), QuantConfig(2, 128)) == pytest.approx(2 + 3 * 18 / 300)  # partial group
    assert weight_bits((7, 5), QuantConfig(16)) == 7 * 5 * 16


def test_mse_clipping_never_worse_and_helps_heavy_tails():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(16, 512, generator=gen) ** 3  # heavy tails stretch the min/max range
    for bits in (2, 3, 4):
        plain = quantization_error(w, QuantConfig(bits, 128))
        clipped = quantization_error(w, QuantConfig(bits, 128, mse_clip=True))
        assert clipped <= plain
    assert quantization_error(w, QuantConfig(2, 128, mse_clip=True)) < 0.85 * quantization_error(
        w, QuantConfig(2, 128))


def test_symmetric_keeps_zero_exact_and_conv_shapes_work():
    w = torch.randn(8, 4, 3, 3)
    w[0, 0, 0, 0] = 0.0
    out = fake_quantize(w, QuantConfig(4, 16, symmetric=True))
    assert out.shape == w.shape and out[0, 0, 0, 0] == 0
    assert set(quantize(w, QuantConfig(4, 16, symmetric=True)).zeros.unique().tolist()) == {8}


def test_sixteen_bits_is_left_alone_and_bad_configs_raise():
    w = torch.randn(4, 4)
    assert torch.equal(fake_quantize(w, QuantConfig(16)), w.half().float())  # stored in fp16
    with pytest.raises(ValueError, match="bits must be one of"):
        QuantConfig(7)
    with pytest.raises(ValueError, match="group_size"):
        QuantConfig(4, 0)


@pytest.mark.parametrize("config", [QuantConfig(3, 32), QuantConfig(4, 64, symmetric=True, mse_clip=True),
                                    QuantConfig(16), QuantConfig(4, 32, grid="gguf")])
def test_a_matrix_fake_quantized_in_blocks_of_rows_is_the_whole_one(config, monkeypatch):
    from kernels import quantizer

    w = torch.randn(37, 256, generator=torch.Generator().manual_seed(5))
    whole = fake_quantize(w, config)
    monkeypatch.setattr(quantizer, "ERROR_BLOCK_ELEMENTS", 5 * 256)  # blocks of 5 rows, the last of 2
    assert torch.equal(fake_quantize(w, config), whole)
