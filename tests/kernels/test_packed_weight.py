"""PackedWeight: dequantizes to exactly the quantizer's values, selects rows, checks its
operands, and stores what the size accounting counts."""

import pytest
import torch

from kernels.packed_weight import PackedWeight, check_packed, pack_weight
from kernels.quantizer import quantize
from kernels.scheme import QuantConfig, weight_bytes

CASES = [
    # (shape, group size): K % g != 0, K < g (per channel), odd N, conv weights
    ((75, 200), 64),
    ((33, 48), 128),
    ((40, 96), 40),
    ((7, 3, 3, 3), 8),
    ((16, 1, 3), 128),
]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("shape,group_size", CASES)
@pytest.mark.parametrize("symmetric", [False, True])
def test_dequantize_equals_the_quantizer(bits, shape, group_size, symmetric):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(bits))
    config = QuantConfig(bits, group_size, symmetric=symmetric)
    packed = pack_weight(w, config)
    assert packed.shape == shape
    assert torch.equal(packed.dequantize(), quantize(w, config).dequantize())


@pytest.mark.parametrize("symmetric", [False, True])
def test_select_rows(symmetric):
    w = torch.randn(70, 90)
    packed = pack_weight(w, QuantConfig(3, 32, symmetric=symmetric))
    rows = torch.tensor([69, 0, 5, 5, 33])
    assert torch.equal(packed.select_rows(rows).dequantize(), packed.dequantize()[rows])


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_stored_bytes_match_the_size_accounting(bits):
    shape = (256, 512)  # K and N multiples of 32: no padding
    config = QuantConfig(bits, 128)
    packed = pack_weight(torch.randn(shape), config)
    stored = sum(t.numel() * t.element_size() for t in (packed.qweight, packed.scales,
                                                        packed.zeros))
    assert stored == weight_bytes(shape, config)


def test_symmetric_weights_store_no_zero_points():
    packed = pack_weight(torch.randn(64, 256), QuantConfig(4, 128, symmetric=True))
    assert packed.zeros.shape == (2, 0)


def test_inconsistent_operands_are_rejected():
    good = pack_weight(torch.randn(64, 256), QuantConfig(4, 128))
    with pytest.raises(ValueError, match="qweight shape"):
        check_packed(good.qweight[:-1], good.scales, good.zeros, 4, 128, 256, False)
    with pytest.raises(ValueError, match="groups"):
        check_packed(good.qweight, good.scales[:1], good.zeros, 4, 128, 256, False)
    with pytest.raises(ValueError, match="zeros shape"):
        check_packed(good.qweight, good.scales, good.zeros, 4, 128, 256, True)
    with pytest.raises(ValueError, match="int32"):
        check_packed(good.qweight.float(), good.scales, good.zeros, 4, 128, 256, False)
    with pytest.raises(ValueError, match="exceeds"):
        check_packed(good.qweight, good.scales, good.zeros, 4, 512, 256, False)
    with pytest.raises(ValueError, match="qweight shape"):
        PackedWeight(good.qweight, good.scales, good.zeros, (64, 200), good.config)
