"""The torch path of the weight-only matmul against a float64 reference of dequant(W)."""

import pytest
import torch

from kernels.fallback import fallback_linear
from kernels.packed_weight import pack_weight
from kernels.scheme import QuantConfig

# (N, K, group size): odd N with K % g != 0, K < g (per channel), g not a multiple of 32
SHAPES = [(75, 200, 64), (33, 48, 128), (40, 96, 40)]


def run(x, packed, bias):
    return fallback_linear(x, packed.qweight, packed.scales, packed.zeros, bias,
                           packed.config.bits, packed.group_size, packed.in_features,
                           packed.config.symmetric)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("rows", [1, 5, 16])
@pytest.mark.parametrize("n,k,g", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_float64_reference(device, check_reference, bits, rows, n, k, g, dtype):
    gen = torch.Generator().manual_seed(bits * 100 + rows)
    w = torch.randn(n, k, generator=gen)
    packed = pack_weight(w, QuantConfig(bits, g)).to(device)
    x = torch.randn(rows, k, generator=gen).to(device=device, dtype=dtype)
    bias = torch.randn(n, generator=gen).to(device)
    y = run(x, packed, bias)
    assert y.dtype == dtype and y.device.type == device.type
    check_reference(y, x, packed.dequantize(torch.float64), bias)


@pytest.mark.parametrize("symmetric", [False, True])
def test_without_bias_and_symmetric(device, check_reference, symmetric):
    w = torch.randn(31, 130)
    packed = pack_weight(w, QuantConfig(3, 32, symmetric=symmetric)).to(device)
    x = torch.randn(4, 130, device=device)
    check_reference(run(x, packed, None), x, packed.dequantize(torch.float64))


def test_shape_errors():
    packed = pack_weight(torch.randn(16, 64), QuantConfig(4, 32))
    with pytest.raises(ValueError, match="features"):
        run(torch.randn(2, 63), packed, None)
    with pytest.raises(ValueError, match="2-D"):
        run(torch.randn(64), packed, None)
    with pytest.raises(ValueError, match="bias"):
        run(torch.randn(2, 64), packed, torch.zeros(15))
    with pytest.raises(ValueError, match="floating"):
        run(torch.ones(2, 64, dtype=torch.int64), packed, None)
