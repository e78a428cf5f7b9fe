"""The GGUF encoders (kernels.gguf_quants): the bytes of every type decode with the `gguf`
package to exactly the values we compute, blocks of awkward content included (flat,
one-signed, outliers); the error falls as the type grows; the stored size is the
scheme's accounting; the gguf grid's widths per row length and its cache key."""

from __future__ import annotations

import math

import pytest
import torch

from kernels.gguf_quants import decode, encode, fake_quantize, quantization_error
from kernels.quantizer import quantize
from kernels.scheme import (
    GGUF_TYPES,
    WEIGHT_BITS,
    QuantConfig,
    QuantScheme,
    bits_per_weight,
    gguf_type,
    gguf_widths,
    weight_bits,
)

TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16", "F32")


def awkward_weight(rows: int = 12, k: int = 512) -> torch.Tensor:
    w = torch.randn(rows, k, generator=torch.Generator().manual_seed(0)) * 0.02
    w[0] = 0.0  # flat rows: every scale zero
    w[1] = 0.3  # constant
    w[2] = -w[2].abs()  # one sign only
    w[3] = w[3].abs()
    w[4, 7] = 2.0  # an outlier in one sub-block
    w[5, :16] = 0.0  # one flat sub-block beside ordinary ones
    w[6] *= 1e-4  # tiny values (fp16 super-block scales near their floor)
    return w


@pytest.mark.parametrize("name", TYPES)
def test_our_bytes_decode_with_gguf_to_our_values(name):
    w = awkward_weight()
    raw, values = encode(w, name)
    t = GGUF_TYPES[name]
    assert raw.shape == (w.shape[0], w.shape[1] // t.block * t.block_bytes)
    assert torch.equal(decode(raw, name), values)  # bit for bit
    assert values.shape == w.shape and torch.isfinite(values).all()
    assert torch.equal(values[0], torch.zeros_like(values[0]))  # zero stays zero


def test_the_error_falls_as_the_type_grows():
    w = torch.randn(64, 1024, generator=torch.Generator().manual_seed(1)) * 0.02
    def rel(name):
        return float(((encode(w, name)[1] - w) ** 2).sum() / (w ** 2).sum())
    k_quants = [rel(n) for n in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "F16")]
    assert k_quants == sorted(k_quants, reverse=True) and k_quants[-1] < 1e-6
    assert rel("Q4_0") > rel("Q5_0") > rel("Q8_0")
    assert rel("Q4_K") < 0.01 and rel("Q6_K") < 0.001  # in the range llama.cpp's types reach


def test_the_stored_size_is_the_schemes_accounting():
    scheme = QuantScheme(grid="gguf")
    for k in (256, 1536, 576, 96):
        shape = (8, k)
        for bits in WEIGHT_BITS:
            t = gguf_type(bits, k)
            raw, _ = encode(torch.randn(shape), t.name)
            assert weight_bits(shape, scheme.config(bits)) == raw.nbytes * 8
    assert [bits_per_weight((4, 512), scheme.config(b)) for b in WEIGHT_BITS] == [
        2.625, 3.4375, 4.5, 5.5, 6.5625, 8.5, 16.0]


def test_widths_follow_the_row_length():
    assert gguf_widths(1536) == WEIGHT_BITS  # whole 256-blocks: every k-quant
    assert gguf_widths(576) == (4, 5, 8, 16)  # whole 32-blocks: Q4_0, Q5_0, Q8_0, F16
    assert gguf_widths(100) == (16,)
    assert [gguf_type(b, 576).name for b in (4, 5, 8, 16)] == ["Q4_0", "Q5_0", "Q8_0", "F16"]
    # a width a row cannot take as its own type falls back as llama-quantize does
    assert [gguf_type(b, 576).name for b in (2, 3, 6)] == ["Q4_0", "Q4_0", "Q8_0"]
    assert gguf_type(4, 100).name == "F16"
    assert QuantScheme(grid="gguf").widths_for((576, 1536)) == WEIGHT_BITS
    assert QuantScheme().widths_for((576, 100)) == WEIGHT_BITS  # the group grid: unchanged


def test_fake_quantize_and_error_agree_and_keep_shape_and_dtype():
    w = torch.randn(16, 512, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    config = QuantConfig(4, grid="gguf")
    q = fake_quantize(w, config)
    assert q.shape == w.shape and q.dtype == w.dtype
    expected = float(((encode(w, "Q4_K")[1].double() - w.double()) ** 2).sum())
    assert math.isclose(quantization_error(w, config), expected, rel_tol=1e-12)


def test_the_group_grid_keeps_its_keys_and_the_gguf_grid_refuses_what_it_cannot_run():
    assert "grid" not in QuantScheme().as_dict()
    assert QuantScheme(grid="gguf").as_dict()["grid"] == "gguf"
    with pytest.raises(ValueError, match="algorithm 'gptq' cannot run"):
        QuantScheme(grid="gguf", algorithm="gptq")
    with pytest.raises(ValueError, match="symmetric and mse_clip do not apply"):
        QuantScheme(grid="gguf", mse_clip=True)
    with pytest.raises(ValueError, match="grid must be one of"):
        QuantScheme(grid="blocks")
    with pytest.raises(ValueError, match="gguf grid stores GGUF blocks"):
        quantize(torch.randn(4, 256), QuantConfig(4, grid="gguf"))
    with pytest.raises(ValueError, match="whole 256-value blocks"):
        encode(torch.randn(4, 576), "Q4_K")
