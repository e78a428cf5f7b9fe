"""QuantLinear, QuantConv and QuantEmbedding compute their float layer's function with the
fake-quantized weight."""

import pytest
import torch
from torch import nn

from kernels.modules import QuantConv, QuantEmbedding, QuantLinear
from kernels.quantizer import fake_quantize
from kernels.scheme import QuantConfig


def fake_quantized(layer: nn.Module, config: QuantConfig) -> nn.Module:
    with torch.no_grad():
        layer.weight.copy_(fake_quantize(layer.weight, config))
    return layer


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("bias", [True, False])
def test_linear(device, bits, bias):
    torch.manual_seed(bits)
    linear = nn.Linear(100, 37, bias=bias).to(device)
    config = QuantConfig(bits, 32)
    packed = QuantLinear.from_linear(linear, config)
    x = torch.randn(3, 4, 100, device=device)
    expected = fake_quantized(linear, config)(x)
    torch.testing.assert_close(packed(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: nn.Conv2d(6, 8, 3, stride=2, padding=1),
    lambda: nn.Conv2d(6, 8, (3, 1), groups=2, bias=False, padding_mode="reflect", padding=1),
    lambda: nn.Conv1d(5, 7, 4, dilation=2, padding="same"),
])
def test_conv(device, make):
    torch.manual_seed(0)
    conv = make().to(device)
    config = QuantConfig(3, 16)
    packed = QuantConv.from_conv(conv, config)
    shape = (2, conv.in_channels, 9, 11) if isinstance(conv, nn.Conv2d) else (2, conv.in_channels, 13)
    x = torch.randn(shape, device=device)
    expected = fake_quantized(conv, config)(x)
    torch.testing.assert_close(packed(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("symmetric", [False, True])
def test_embedding_dequantizes_the_looked_up_rows(device, symmetric):
    torch.manual_seed(1)
    embedding = nn.Embedding(50, 24, padding_idx=0).to(device)
    config = QuantConfig(4, 16, symmetric=symmetric)
    packed = QuantEmbedding.from_embedding(embedding, config)
    ids = torch.tensor([[0, 3, 49, 3], [7, 7, 1, 20]], device=device)
    expected = fake_quantized(embedding, config)(ids)
    assert torch.equal(packed(ids), expected)


def test_module_errors():
    with pytest.raises(ValueError, match="16-bit"):
        QuantLinear(4, 4, True, QuantConfig(16))
    with pytest.raises(ValueError, match="max_norm"):
        QuantEmbedding.from_embedding(nn.Embedding(10, 4, max_norm=1.0), QuantConfig(4))
    packed = QuantEmbedding.from_embedding(nn.Embedding(10, 4), QuantConfig(4))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        packed(torch.tensor([10]))
    with pytest.raises(ValueError, match="int32 or int64"):
        packed(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="features"):
        QuantLinear.from_linear(nn.Linear(8, 4), QuantConfig(4))(torch.randn(2, 7))


def test_buffers_are_the_packed_tensors():
    packed = QuantLinear.from_linear(nn.Linear(64, 40), QuantConfig(3, 32))
    assert set(packed.state_dict()) == {"qweight", "scales", "zeros", "bias"}
    assert packed.qweight.dtype == torch.int32 and packed.qweight.shape == (6, 40)
    assert packed.scales.dtype == torch.float16 and packed.scales.shape == (2, 40)
    assert packed.zeros.shape == (2, 6)
