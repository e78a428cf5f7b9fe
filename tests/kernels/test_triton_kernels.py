"""The Triton GEMV and GEMM kernels against a float64 reference of dequant(W): compiled
on a GPU, under TRITON_INTERPRET=1 on the CPU (small shapes: the interpreter is slow)."""

import pytest
import torch

from kernels.packed_weight import pack_weight
from kernels.scheme import QuantConfig

DTYPES = [torch.float16, torch.bfloat16]


def launch(kernels, x, packed, bias):
    fn = kernels.gemv if x.shape[0] == 1 else kernels.gemm
    return fn(x, packed.qweight, packed.scales, packed.zeros, bias, packed.config.bits,
              packed.group_size, packed.in_features, packed.config.symmetric)


def operands(kernels, n, k, config, rows, dtype, seed, bias=True):
    gen = torch.Generator().manual_seed(seed)
    packed = pack_weight(torch.randn(n, k, generator=gen), config).to(kernels.device)
    x = torch.randn(rows, k, generator=gen).to(device=kernels.device, dtype=dtype)
    b = torch.randn(n, generator=gen).to(kernels.device) if bias else None
    return x, packed, b


WIDTHS_AND_PATHS = [
    *[(bits, rows, dtype) for bits in (2, 3, 4, 8) for rows in (1, 5, 16) for dtype in DTYPES],
    *[(bits, rows, torch.float16) for bits in (5, 6) for rows in (1, 5)],
]


@pytest.mark.parametrize("bits,rows,dtype", WIDTHS_AND_PATHS)
def test_every_width_and_path(triton_kernels, check_reference, bits, rows, dtype):
    # odd N and K % g != 0; one K tile per group (g a multiple of BLOCK_K)
    x, packed, bias = operands(triton_kernels, 75, 200, QuantConfig(bits, 64), rows, dtype,
                               seed=bits * 10 + rows)
    y = launch(triton_kernels, x, packed, bias)
    assert y.dtype == dtype and y.shape == (rows, 75)
    check_reference(y, x, packed.dequantize(torch.float64), bias)


@pytest.mark.parametrize("n,k,config", [
    (33, 48, QuantConfig(4, 128)),  # K < g: one group per row (per channel)
    (40, 96, QuantConfig(3, 40)),  # groups not aligned with K tiles
    (24, 100, QuantConfig(8, 32, symmetric=True)),  # no zero points stored
    (9, 256, QuantConfig(2, 128)),
])
@pytest.mark.parametrize("rows", [1, 5])
def test_group_layouts(triton_kernels, check_reference, n, k, config, rows):
    x, packed, bias = operands(triton_kernels, n, k, config, rows, torch.float16, seed=n)
    check_reference(launch(triton_kernels, x, packed, bias), x,
                    packed.dequantize(torch.float64), bias)


@pytest.mark.parametrize("rows", [1, 17])
def test_without_bias(triton_kernels, check_reference, rows):
    x, packed, _ = operands(triton_kernels, 64, 64, QuantConfig(4, 64), rows, torch.bfloat16,
                            seed=5, bias=False)
    check_reference(launch(triton_kernels, x, packed, None), x,
                    packed.dequantize(torch.float64))


def test_launchers_check_operands(triton_kernels):
    x, packed, bias = operands(triton_kernels, 32, 64, QuantConfig(4, 32), 1, torch.float16, 0)
    with pytest.raises(ValueError, match="fp16 or bf16"):
        launch(triton_kernels, x.float(), packed, bias)
    with pytest.raises(ValueError, match="one row"):
        triton_kernels.gemv(x.repeat(2, 1), packed.qweight, packed.scales, packed.zeros, bias,
                            4, 32, 64, False)
    with pytest.raises(ValueError, match="features"):
        launch(triton_kernels, x[:, :32], packed, bias)
    with pytest.raises(ValueError, match="contiguous"):
        wide = torch.zeros(1, 128, dtype=torch.float16, device=triton_kernels.device)
        launch(triton_kernels, wide[:, ::2], packed, bias)
    with pytest.raises(ValueError, match="qweight shape"):
        triton_kernels.gemm(x, packed.qweight, packed.scales, packed.zeros, bias, 3, 32, 64,
                            False)
