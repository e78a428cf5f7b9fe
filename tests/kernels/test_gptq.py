"""GPTQ (kernels.gptq) against RTN, against a slow dense implementation of the same
update, through packing, and its layer inputs (kernels.hessian)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernels.apply import apply_allocation
from kernels.artifact import load_artifact, save_artifact
from kernels.gptq import CalibrationError, column_order, gptq_quantize, output_error
from kernels.hessian import LayerHessian, input_rows
from kernels.packed_weight import PackedWeight
from kernels.quantizer import grid_codes, group_params, group_view, quantize
from kernels.scheme import QuantConfig

WIDTHS = [2, 3, 4, 5, 6, 8]



pytestmark = pytest.mark.usefixtures("single_thread")  # tiny layers: one thread is faster

def correlated_layer(out=48, k=96, rows=600, seed=0):
    """A weight and a Hessian of correlated inputs (as real activations are)."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=gen) / k**0.5
    x = torch.randn(rows, k, generator=gen) @ mix + 0.2 * torch.randn(rows, k, generator=gen)
    hessian = LayerHessian.empty(k)
    hessian.add(x)
    return torch.randn(out, k, generator=gen), hessian


@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_output_error_below_rtn_at_every_width(bits, act_order):
    w, hessian = correlated_layer()
    config = QuantConfig(bits, 32)
    rtn = output_error(w, quantize(w, config).dequantize(), hessian)
    gptq = output_error(w, gptq_quantize(w, hessian, config, act_order=act_order).dequantize(), hessian)
    assert gptq < 0.9 * rtn, (gptq, rtn)


def dense_gptq(w, hessian, config, damping, act_order):
    """The same algorithm written directly: one column at a time in float64, the
    inverse Hessian of the remaining columns updated by the OBS rule
    H⁻¹ ← H⁻¹ − H⁻¹[:, j] H⁻¹[j, :] / H⁻¹[j, j], no Cholesky, no blocks."""
    w = w.double().clone()
    n, k = w.shape
    g = config.group_size_for(k)
    h = hessian.xtx.double() * 2 / hessian.rows
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    h += damping * torch.diagonal(h).mean() * torch.eye(k, dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    order = torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order else torch.arange(k)
    scales = torch.zeros(n, -(-k // g), dtype=torch.float64)
    zeros = torch.zeros_like(scales)
    if act_order:
        s, z = group_params(group_view(w, g), config)
        scales[:], zeros[:] = s, z
    codes = torch.zeros(n, k, dtype=torch.float64)
    remaining = list(range(k))
    for j in order.tolist():
        grp = j // g
        if not act_order and j % g == 0:
            s, z = group_params(group_view(w[:, j:j + g], g), config)
            scales[:, grp], zeros[:, grp] = s[:, 0], z[:, 0]
        s, z = scales[:, grp:grp + 1], zeros[:, grp:grp + 1]
        q = grid_codes(w[:, j].reshape(n, 1, 1), s, z, config).reshape(n)
        codes[:, j] = q
        remaining.remove(j)
        err = (w[:, j] - (q - z[:, 0]) * s[:, 0]) / hinv[j, j]
        w[:, remaining] -= torch.outer(err, hinv[j, remaining])
        hinv = hinv - torch.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    return codes


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("block", [8, 12, 64])
@pytest.mark.parametrize("symmetric,mse_clip", [(False, False), (True, False), (False, True)])
def test_gptq_equals_the_dense_update(act_order, block, symmetric, mse_clip):
    w, hessian = correlated_layer(out=10, k=36, rows=200, seed=3)  # K = 36: a partial last group
    config = QuantConfig(3, 8, symmetric, mse_clip)
    fast = gptq_quantize(w, hessian, config, damping=0.05, act_order=act_order, block_size=block,
                         dtype=torch.float64)
    slow = dense_gptq(w, hessian, config, 0.05, act_order)
    assert torch.equal(fast.codes.double(), slow)


def test_a_diagonal_hessian_gives_round_to_nearest():
    """No cross terms, no error to pass on: GPTQ's grid and rounding are RTN's."""
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    hessian = LayerHessian.empty(64)
    hessian.add(torch.diag(torch.rand(64) + 0.5))
    for config in (QuantConfig(4, 16), QuantConfig(3, 32, mse_clip=True), QuantConfig(2, 64, True)):
        q, r = gptq_quantize(w, hessian, config), quantize(w, config)
        assert torch.equal(q.codes, r.codes) and torch.equal(q.scales, r.scales)
        assert torch.equal(q.zeros, r.zeros)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_act_order_round_trips_through_packing(bits):
    """Act-order keeps groups contiguous along K: the codes are in weight order, so the
    packed weight (no permutation index) dequantizes to exactly GPTQ's result."""
    w, hessian = correlated_layer(out=40, k=96, seed=2)
    config = QuantConfig(bits, 32)
    q = gptq_quantize(w, hessian, config, act_order=True)
    order = column_order(hessian.gptq_matrix(), True)
    assert not torch.equal(order, torch.arange(96))  # the pass really was permuted
    assert int(q.codes.max()) <= 2**bits - 1 and int(q.zeros.max()) <= 2**bits - 1
    packed = PackedWeight.from_quantized(q)
    assert torch.equal(packed.dequantize(), q.dequantize())
    x = torch.randn(5, 96)
    assert torch.allclose(x @ packed.dequantize().T, x @ q.dequantize().T, atol=1e-5)


def test_a_layer_without_inputs_is_a_clear_error():
    w = torch.randn(4, 16)
    with pytest.raises(CalibrationError, match="never reaches"):
        gptq_quantize(w, LayerHessian.empty(16), QuantConfig(4, 16), name="fc")


def test_rank_deficient_hessian_without_damping_is_a_clear_error():
    """3 calibration rows for K = 16 and no damping: H is singular, and the message
    says what to do."""
    hessian = LayerHessian.empty(16)
    hessian.add(torch.randn(3, 16))
    with pytest.raises(CalibrationError, match=r"K=16, from 3 calibration rows, rank 3.*more calibration"):
        gptq_quantize(torch.randn(4, 16), hessian, QuantConfig(4, 16), damping=0.0, name="fc")
    # the default damping makes the same Hessian usable
    gptq_quantize(torch.randn(4, 16), hessian, QuantConfig(4, 16), damping=0.01)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 5, 3, padding=1),
    nn.Conv2d(3, 4, (3, 2), stride=2, dilation=(1, 2), padding=(2, 1), padding_mode="reflect"),
    nn.Conv2d(2, 3, 3, padding="same", bias=False),
    nn.Conv1d(4, 6, 5, stride=2, padding=2),
])
def test_convolution_rows_match_the_flattened_weight(conv):
    """X Wᵀ over the im2col rows is the convolution: X's columns follow the weight's
    (out, in·kh·kw) view, so the Hessian is the one of the conv's output error."""
    torch.manual_seed(0)
    x = torch.randn(2, conv.in_channels, *([9, 8] if isinstance(conv, nn.Conv2d) else [11]))
    rows = input_rows(conv, x)
    with torch.no_grad():
        y = conv(x) - (0 if conv.bias is None else conv.bias.view(1, -1, *[1] * (x.dim() - 2)))
    flat = y.flatten(2).transpose(1, 2).reshape(-1, conv.out_channels)
    assert torch.allclose(rows @ conv.weight.reshape(conv.out_channels, -1).T, flat, atol=1e-5)


def test_gptq_lowers_a_convolutions_real_output_error():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    x = F.avg_pool2d(torch.randn(32, 8, 12, 12), 3, 1, 1)  # spatially correlated inputs
    hessian = LayerHessian.empty(72)
    hessian.add(input_rows(conv, x))
    config = QuantConfig(3, 128)  # K = 72 < 128: one group per output channel
    errors = {}
    candidates = {"rtn": quantize(conv.weight, config), "gptq": gptq_quantize(conv.weight, hessian, config)}
    for label, q in candidates.items():
        with torch.no_grad():
            errors[label] = float((F.conv2d(x, q.dequantize(), padding=1) - conv(x)).pow(2).sum())
    assert errors["gptq"] < 0.7 * errors["rtn"], errors


def test_the_packed_model_and_the_artifact_keep_gptqs_codes(tmp_path):
    """apply_allocation / save_artifact pack the codes GPTQ chose (act-order included),
    not a new round-to-nearest of the weight; the loaded artifact computes the same."""
    torch.manual_seed(0)

    def build():
        return nn.Sequential(nn.Linear(96, 40), nn.ReLU(), nn.Conv1d(40, 8, 1))

    model = build()
    hessians = {}
    for name, k, rows in (("0", 96, torch.randn(300, 96) @ torch.randn(96, 96)),
                          ("2", 40, torch.randn(300, 40))):
        hessians[name] = LayerHessian.empty(k)
        hessians[name].add(rows)
    configs = {"0": QuantConfig(3, 32), "2": QuantConfig(4, 16)}
    codes = {n: gptq_quantize(model.get_submodule(n).weight, hessians[n], configs[n], act_order=True)
             for n in configs}
    assert not torch.equal(codes["0"].codes, quantize(model[0].weight, configs["0"]).codes)
    packed = apply_allocation(model, configs, codes)
    x = torch.randn(5, 96)
    expect = F.linear(x, codes["0"].dequantize(), model[0].bias)
    assert torch.allclose(packed[0](x), expect, atol=1e-5)
    assert torch.equal(packed[2].dequantized_weight(torch.float32), codes["2"].dequantize())
    save_artifact(model, configs, tmp_path, {"note": "gptq"}, codes)
    loaded = load_artifact(tmp_path, build)
    y = torch.randn(2, 96)
    with torch.no_grad():
        assert torch.allclose(loaded[0](y), packed[0](y), atol=1e-6)
        assert torch.equal(loaded[2].qweight, packed[2].qweight)
