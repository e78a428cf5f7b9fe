"""The `bitalloc::wq_linear` custom op: dispatch, fake implementation, leading dims."""

import pytest
import torch

from kernels.ops import quant_linear, uses_triton, wq_linear
from kernels.packed_weight import pack_weight
from kernels.scheme import QuantConfig


def args_for(packed, x, bias):
    return (x, packed.qweight, packed.scales, packed.zeros, bias, packed.config.bits,
            packed.group_size, packed.in_features, packed.config.symmetric)


def test_opcheck_passes():
    packed = pack_weight(torch.randn(24, 80), QuantConfig(3, 32))
    torch.library.opcheck(wq_linear, args_for(packed, torch.randn(3, 80), torch.randn(24)))


def test_fake_implementation_gives_the_output_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    packed = pack_weight(torch.randn(24, 80), QuantConfig(4, 32))
    with FakeTensorMode(allow_non_fake_inputs=True):
        y = wq_linear(*args_for(packed, torch.empty(7, 80, dtype=torch.float16), None))
    assert y.shape == (7, 24) and y.dtype == torch.float16


def test_cpu_uses_the_torch_path(check_reference):
    x = torch.randn(2, 5, 64, dtype=torch.float16)
    assert not uses_triton(x)
    packed = pack_weight(torch.randn(10, 64), QuantConfig(4, 32))
    y = quant_linear(x, packed)
    assert y.shape == (2, 5, 10)
    check_reference(y.reshape(10, 10), x.reshape(10, 64), packed.dequantize(torch.float64))


def test_quant_linear_checks_features():
    packed = pack_weight(torch.randn(10, 64), QuantConfig(4, 32))
    with pytest.raises(ValueError, match="features"):
        quant_linear(torch.randn(3, 65), packed)


@pytest.mark.parametrize("rows", [1, 16])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_dispatches_to_triton(check_reference, rows, dtype):
    x = torch.randn(rows, 256, device="cuda", dtype=dtype)
    assert uses_triton(x)
    packed = pack_weight(torch.randn(96, 256), QuantConfig(4, 128)).to("cuda")
    bias = torch.randn(96, device="cuda")
    check_reference(quant_linear(x, packed, bias), x, packed.dequantize(torch.float64), bias)
