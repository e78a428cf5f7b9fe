"""LRP: relevance is conserved layer to layer, on captum's rules and on the
modified-gradient rules, and Ω follows R_l · ‖ΔW‖² / ‖W‖²."""

import pytest
import torch
from sens_models import tiny_cnn, tiny_mlp
from sens_run import run_method
from torch import nn

from kernels.quantizer import quantization_error
from kernels.scheme import QuantConfig
from sensitivity.layers import discover_layers
from sensitivity.lrp import captum_rules, modified_gradient


def _names(bundle):
    return [layer.name for layer in discover_layers(bundle) if layer.used]


@pytest.mark.parametrize("make", [lambda: tiny_mlp(bias=False, act=nn.ReLU),
                                  lambda: tiny_cnn(bias=False, bn=False)])
@pytest.mark.parametrize("rules", ["captum", "modified_gradient"])
def test_relevance_is_conserved_without_biases(make, rules):
    """Bias-free ReLU nets: every layer's relevance sums to the output relevance."""
    bundle = make()
    names = _names(bundle)
    batch = bundle.calibration[0]
    if rules == "captum":
        rel = captum_rules.batch_relevance(bundle, captum_rules.canonize(bundle.model), batch, names)
    else:
        rel = modified_gradient.batch_relevance(bundle, batch, names, eps=1e-9)
    for name in names:
        assert rel.signed[name] == pytest.approx(rel.output, rel=1e-3), (name, rel.signed, rel.output)


def test_captum_canonization_folds_batchnorm_and_keeps_outputs(digits_bundle):
    gm = captum_rules.canonize(digits_bundle.model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    x = digits_bundle.calibration[0]["x"][:32]
    with torch.no_grad():
        assert torch.allclose(gm(x), digits_bundle.model(x), atol=1e-4)
    assert any(isinstance(m, nn.BatchNorm2d) for m in digits_bundle.model.modules())  # original intact


def test_lrp_table_on_digits_cnn(digits_bundle):
    layers = [layer for layer in discover_layers(digits_bundle) if layer.used]
    table = run_method("lrp", digits_bundle, layers=layers)
    assert table.meta["rules"] == "captum"
    r = {n: s["relevance"] for n, s in table.layer_stats.items()}
    assert sum(r.values()) == pytest.approx(1.0) and all(v > 0 for v in r.values())
    # the classifier head sees the output relevance undiminished
    assert table.layer_stats["fc2"]["conservation"] == pytest.approx(1.0, rel=1e-3)
    w = dict(digits_bundle.model.named_modules())["fc1"].weight
    expected = r["fc1"] * quantization_error(w, QuantConfig(4)) / float(w.double().pow(2).sum())
    assert table.omega["fc1"][(4, 16)] == pytest.approx(expected, rel=1e-9)


def test_transformer_relevance_is_conserved_through_the_residual_stream(minilm_bundle):
    """Attention held constant (CP-LRP), identity LayerNorm/GELU: the relevance of each
    encoder block's output stays near the output relevance (biases and the epsilon
    rule absorb a little). AttnLRP's softmax rule is not conservative: half of each
    attention output's relevance goes to the attention weights, and what the softmax
    passes on to Q and K is less (on this trained model the embeddings keep about
    55%); Q and K get relevance only then."""
    blocks = [f"encoder.layer.{k}.output" for k in range(6)]
    qk = [f"encoder.layer.{k}.attention.self.{p}" for k in range(6) for p in ("query", "key")]
    batch = {k: v[:4] for k, v in minilm_bundle.calibration[0].items()}
    rel = modified_gradient.batch_relevance(minilm_bundle, batch, blocks + ["embeddings"] + qk, eps=1e-6,
                                            attention="constant")
    assert rel.output == pytest.approx(4.0, rel=1e-4)  # 4 unit embeddings dotted with themselves
    for name in blocks + ["embeddings"]:
        assert rel.signed[name] == pytest.approx(rel.output, rel=0.15), (name, rel.signed[name])
    assert all(rel.absolute[n] == 0 for n in qk)
    attn = modified_gradient.batch_relevance(minilm_bundle, batch, blocks + ["embeddings"] + qk, eps=1e-6)
    assert all(attn.absolute[n] > 1e-3 * attn.output for n in qk), attn.absolute
    assert 0.3 * rel.output < attn.signed["embeddings"] < 0.9 * rel.output


def test_lrp_params_are_checked():
    bundle = tiny_mlp()
    layers = [layer for layer in discover_layers(bundle) if layer.used]
    with pytest.raises(ValueError, match="accepted: rules, eps, attention"):
        run_method("lrp", bundle, {"rule": "x"}, layers=layers)
    with pytest.raises(ValueError, match="rules must be"):
        run_method("lrp", bundle, {"rules": "zennit"}, layers=layers)
    with pytest.raises(ValueError, match="eps must be a number > 0"):
        run_method("lrp", bundle, {"eps": True}, layers=layers)
    with pytest.raises(ValueError, match="attention must be one of attnlrp, constant"):
        run_method("lrp", bundle, {"attention": "detach"}, layers=layers)


# --- the AttnLRP rules, one operation at a time, against hand computation ---------


def _rules(eps=1e-9, attention="attnlrp"):
    return modified_gradient.AttnLRPMode(eps, attention)


def _relevance_in(fn, inputs, r_out_grad):
    """R at each input = input ⊙ modified gradient of Σ out ⊙ g (so R_out = out ⊙ g)."""
    inputs = [x.clone().requires_grad_(True) for x in inputs]
    with _rules():
        out = fn(*inputs)
    grads = torch.autograd.grad(out, inputs, r_out_grad, allow_unused=True)
    return out.detach(), [(x * g).detach() for x, g in zip(inputs, grads)]


def _module_relevance(module, x, g, eps=1e-9):
    """(output, R at the input) of `module` under the installed rules; the input is
    the model's leaf, seen through an identity module in front."""
    model = nn.Sequential(nn.Identity(), module)
    store = {}
    with modified_gradient.modified_gradient(model, eps, ["0"], store):
        y = model(x)
    (grad,) = torch.autograd.grad(y, store["0"], g)
    return y.detach(), store["0"].detach() * grad


def test_softmax_rule_by_hand():
    """AttnLRP, Prop. 3.1: R_x = x ⊙ (R_y − y ⊙ Σ R_y), masked logits get none (no nan)."""
    torch.manual_seed(0)
    x = torch.randn(3, 6, dtype=torch.float64) * 2
    x[1, 4:] = torch.finfo(torch.float64).min  # a masked position, as transformers masks
    g = torch.randn(3, 6, dtype=torch.float64)
    y, (r_x,) = _relevance_in(lambda t: torch.nn.functional.softmax(t, dim=-1), [x], g)
    r_y = y * g
    want = x * (r_y - y * r_y.sum(-1, keepdim=True))
    want[1, 4:] = 0
    torch.testing.assert_close(r_x, want)
    assert torch.isfinite(r_x).all()
    # not conservative: the rule drops the bias term of softmax's Taylor expansion
    assert (r_x.sum(-1) - r_y.sum(-1)).abs().max() > 1e-3


def test_constant_attention_detaches_softmax():
    x = torch.randn(2, 5, requires_grad=True)
    with _rules(attention="constant"):
        y = torch.softmax(x, -1)
    assert not y.requires_grad


@pytest.mark.parametrize("op", ["matmul", "@", "bmm", "einsum", "baddbmm"])
def test_bilinear_products_take_the_uniform_rule(op):
    """R_a[i,k] = ½ Σ_j a_ik b_kj / y_ij · R_ij, R_b[k,j] = ½ Σ_i (same): each operand
    gets half of every product term's relevance; the two halves sum to R_y."""
    torch.manual_seed(1)
    a = torch.randn(2, 3, 4, dtype=torch.float64)
    b = torch.randn(2, 4, 5, dtype=torch.float64)
    g = torch.randn(2, 3, 5, dtype=torch.float64)
    fn = {"matmul": torch.matmul, "@": lambda p, q: p @ q, "bmm": torch.bmm,
          "einsum": lambda p, q: torch.einsum("bik,bkj->bij", p, q),
          "baddbmm": lambda p, q: torch.baddbmm(torch.zeros(2, 3, 5, dtype=torch.float64), p, q)}[op]
    y, (r_a, r_b) = _relevance_in(fn, [a, b], g)
    terms = a.unsqueeze(-1) * b.unsqueeze(1) / y.unsqueeze(2) * (y * g).unsqueeze(2)  # (b, i, k, j)
    torch.testing.assert_close(r_a, 0.5 * terms.sum(-1))
    torch.testing.assert_close(r_b, 0.5 * terms.sum(1))
    torch.testing.assert_close(r_a.sum() + r_b.sum(), (y * g).sum())


@pytest.mark.parametrize("op", ["mul", "*"])
def test_elementwise_products_take_the_uniform_rule(op):
    """The SwiGLU gate × up: each factor gets half of the product's relevance."""
    torch.manual_seed(2)
    a, b, g = (torch.randn(4, 6, dtype=torch.float64) for _ in range(3))
    fn = torch.mul if op == "mul" else (lambda p, q: p * q)
    y, (r_a, r_b) = _relevance_in(fn, [a, b], g)
    torch.testing.assert_close(r_a, 0.5 * y * g)
    torch.testing.assert_close(r_b, 0.5 * y * g)


def test_products_with_a_constant_keep_the_plain_gradient():
    """One input-dependent operand (a weight, a rotary cos/sin table): linear, R_x = R_y."""
    torch.manual_seed(3)
    x, g = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    w = torch.randn(4, 2, dtype=torch.float64)
    y, (r_x,) = _relevance_in(lambda t: t @ w, [x], g)
    torch.testing.assert_close(r_x.sum(-1), (y * g).sum(-1))
    cos = torch.randn(3, 4, dtype=torch.float64)
    y, (r_x,) = _relevance_in(lambda t: t * cos, [x], g.repeat(1, 2))
    torch.testing.assert_close(r_x, y * g.repeat(1, 2))


def test_identity_rule_on_activations_and_norms():
    """GELU/SiLU (functional or modules, transformers' composite ones included) and
    RMSNorm pass each element's relevance unchanged; LayerNorm (its centering mixes
    the elements) conserves each row's sum (its bias is zero here)."""
    from transformers.activations import NewGELUActivation
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(4)
    x = torch.randn(3, 8, dtype=torch.float64)
    g = torch.randn(3, 8, dtype=torch.float64)
    ln = nn.LayerNorm(8, dtype=torch.float64)
    rms = LlamaRMSNorm(8).double()
    with torch.no_grad():
        ln.weight.normal_(), ln.bias.zero_(), rms.weight.normal_()
    for fn in (torch.nn.functional.gelu, torch.nn.functional.silu, torch.sigmoid, nn.SiLU(),
               NewGELUActivation(), ln, rms, nn.RMSNorm(8, dtype=torch.float64)):
        if isinstance(fn, nn.Module):
            y, r_x = _module_relevance(fn, x, g)
        else:
            y, (r_x,) = _relevance_in(fn, [x], g)
        if isinstance(fn, nn.LayerNorm):
            torch.testing.assert_close(r_x.sum(-1), (y * g).sum(-1), msg=str(fn))
        else:
            torch.testing.assert_close(r_x, y * g, msg=str(fn))


def test_conv1d_epsilon_rule_equals_the_linear_rule():
    """transformers' Conv1D (GPT-2: weight (in, out), torch.addmm) takes the same
    epsilon rule as nn.Linear with the transposed weight:
    R_x = x ⊙ Wᵀ(R_z / (z + ε·sign z))."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(5)
    linear = nn.Linear(6, 4).double()
    conv = Conv1D(4, 6).double()
    with torch.no_grad():
        conv.weight.copy_(linear.weight.T)
        conv.bias.copy_(linear.bias)
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    g = torch.randn(2, 3, 4, dtype=torch.float64)
    eps = 0.3  # large, so the rule is visible
    (z, r_linear), (z_conv, r_conv) = (_module_relevance(m, x, g, eps) for m in (linear, conv))
    torch.testing.assert_close(z_conv, z)
    r_z = z * g
    sign = torch.where(z >= 0, 1.0, -1.0).double()
    want = x * ((r_z / (z + eps * sign)) @ linear.weight.detach())
    torch.testing.assert_close(r_linear, want)
    torch.testing.assert_close(r_conv, want)


def test_scaled_dot_product_attention_is_written_out_with_the_rules():
    """The fused kernel's value, by matmul/softmax that carry the rules (causal, masks,
    grouped-query heads)."""
    F = torch.nn.functional
    torch.manual_seed(6)
    q = torch.randn(2, 4, 5, 8, dtype=torch.float64)
    k, v = torch.randn(2, 2, 5, 8, dtype=torch.float64), torch.randn(2, 2, 5, 8, dtype=torch.float64)
    mask = torch.rand(2, 1, 5, 5) > 0.3
    mask[..., 0] = True
    additive = torch.where(mask, 0.0, -1e4).double()
    for kwargs in ({"is_causal": True}, {"attn_mask": mask}, {"attn_mask": additive},
                   {"scale": 0.3, "is_causal": True}):
        want = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kwargs)
        inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
        with _rules():
            got = F.scaled_dot_product_attention(*inputs, enable_gqa=True, **kwargs)
        torch.testing.assert_close(got.detach(), want)
        g = torch.randn_like(want)
        grads = torch.autograd.grad(got, inputs, g)
        r_v = (inputs[2] * grads[2]).sum()
        torch.testing.assert_close(r_v, 0.5 * (want * g).sum())  # V: half of the output's


def test_multihead_attention_is_refused():
    model = nn.Sequential(nn.MultiheadAttention(8, 2))
    with pytest.raises(ValueError, match="MultiheadAttention"):
        with modified_gradient.modified_gradient(model, 1e-6, [], {}):
            pass
