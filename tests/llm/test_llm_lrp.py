"""AttnLRP on the tiny causal LMs (GPT-2: Conv1D projections, LayerNorm, GELU;
Llama: RMSNorm, SwiGLU, rotary positions, grouped-query attention; Qwen2: the same
with biased q/k/v): every quantizable layer gets relevance, the query and key
projections included, and the relevance is accounted for exactly: every rule
conserves it except the softmax, whose deficit the attention layers' own relevances
give."""

from __future__ import annotations

import llm_models
import pytest
import torch

from sensitivity.layers import discover_layers
from sensitivity.lrp import modified_gradient

BUILDERS = {"gpt2": llm_models.gpt2, "llama": llm_models.llama, "qwen2": llm_models.qwen2}


def _bundle(arch: str, sharpen: float = 1.0):
    """A tiny random LM; `sharpen` scales the query and key weights so the attention
    is far from uniform (at initialisation its logits are ~1e-3 and the softmax passes
    almost nothing to Q and K)."""
    model = BUILDERS[arch]()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(sharpen)
            if name.endswith("attn.c_attn.weight"):  # GPT-2: q and k are its first 2·n_embd columns
                p[:, : 2 * model.config.n_embd].mul_(sharpen)
    return llm_models.bundle(model)


def _names(bundle):
    return [layer.name for layer in discover_layers(bundle) if layer.used]


def _embeddings(arch):
    return ["transformer.wte", "transformer.wpe"] if arch == "gpt2" else ["model.embed_tokens"]


def _blocks(bundle):
    return bundle.model.transformer.h if hasattr(bundle.model, "transformer") else bundle.model.model.layers


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_every_layer_gets_relevance_queries_and_keys_included(arch):
    bundle = _bundle(arch, sharpen=30.0)
    names = _names(bundle)
    batch = bundle.calibration[0]
    rel = modified_gradient.batch_relevance(bundle, batch, names, eps=1e-6)
    assert all(rel.absolute[n] > 1e-4 * rel.output for n in names), rel.absolute
    held = modified_gradient.batch_relevance(bundle, batch, names, eps=1e-6, attention="constant")
    if arch == "gpt2":  # one Conv1D makes q, k and v: look at its q and k columns
        d = bundle.model.config.n_embd
        for attention in ("attnlrp", "constant"):
            r = _output_relevance(bundle, batch, "transformer.h.0.attn.c_attn", attention)
            q, k = r[..., :d].abs().sum(), r[..., d:2 * d].abs().sum()
            assert (q > 1e-3 * rel.output and k > 1e-3 * rel.output) == (attention == "attnlrp")
    else:
        qk = [n for n in names if n.endswith(("q_proj", "k_proj"))]
        assert len(qk) == 4
        assert all(rel.absolute[n] > 1e-3 * rel.output for n in qk)
        assert all(held.absolute[n] == 0 for n in qk)  # CP-LRP: attention held constant


def _output_relevance(bundle, batch, name, attention):
    store = {}
    with torch.enable_grad():
        with modified_gradient.modified_gradient(bundle.model, 1e-6, [name], store, attention):
            out = bundle.forward(bundle.model, batch)
        (g,) = torch.autograd.grad(bundle.output_loss.relevance(out, batch), store[name])
    return (store[name] * g).detach()


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_relevance_is_conserved_with_constant_attention(arch):
    """Attention held constant, every other rule conserves: the relevance of the
    embeddings, of every block's output and of the final norm equals the output
    relevance (ε = 1e-9; the biases of these freshly initialised models are zero, so
    none absorbs any)."""
    bundle = _bundle(arch, sharpen=30.0)
    blocks = [f"{'transformer.h' if arch == 'gpt2' else 'model.layers'}.{i}" for i in range(2)]
    norm = "transformer.ln_f" if arch == "gpt2" else "model.norm"
    names = _embeddings(arch) + blocks + [norm]
    rel = modified_gradient.batch_relevance(bundle, bundle.calibration[0], names, eps=1e-9,
                                            attention="constant")
    assert sum(rel.signed[n] for n in _embeddings(arch)) == pytest.approx(rel.output, rel=1e-5)
    for n in blocks + [norm]:
        assert rel.signed[n] == pytest.approx(rel.output, rel=1e-5), (n, rel.signed[n], rel.output)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_attnlrp_relevance_is_accounted_for(arch):
    """With AttnLRP each attention layer's output relevance R_o splits by the uniform
    rule into R_o/2 for V and R_o/2 for the attention weights A; the softmax rule
    passes R_x = x ⊙ (R_A − A ⊙ Σ R_A) to the logits, and Q·Kᵀ splits that evenly
    between the (rotated) queries and keys. Everything else conserves, so per block
    R_in = R_out − R_o/2 + R_q + R_k, and the embeddings hold
    f − Σ_blocks (R_o/2 − R_q − R_k). Checked to 1e-5 with the attention sharp enough
    that Q and K get a real share (Σ|R|; their signed sums nearly cancel: softmax is
    shift-invariant)."""
    bundle = _bundle(arch, sharpen=30.0)
    names = _names(bundle)
    rel = modified_gradient.batch_relevance(bundle, bundle.calibration[0], names, eps=1e-9)
    deficit = 0.0
    for i in range(len(_blocks(bundle))):
        p = f"model.layers.{i}.self_attn."
        r_o, r_v = rel.signed[p + "o_proj"], rel.signed[p + "v_proj"]
        assert r_v == pytest.approx(r_o / 2, rel=1e-5, abs=1e-7)  # the uniform rule on A·V
        assert rel.signed[p + "q_proj"] == pytest.approx(rel.signed[p + "k_proj"], rel=1e-5, abs=1e-7)
        deficit += r_o / 2 - rel.signed[p + "q_proj"] - rel.signed[p + "k_proj"]
    assert rel.absolute[p + "q_proj"] > 0.05 * rel.output  # signed, it nearly cancels
    assert rel.signed["model.embed_tokens"] == pytest.approx(rel.output - deficit, rel=1e-5)


def test_sdpa_attention_gets_the_same_relevance_as_eager():
    """A model loaded with SDPA: the fused attention is written out with the rules."""
    bundle = _bundle("llama", sharpen=30.0)
    names = _names(bundle)
    batch = bundle.calibration[0]
    eager = modified_gradient.batch_relevance(bundle, batch, names, eps=1e-6)
    bundle.model.set_attn_implementation("sdpa")
    assert bundle.model.config._attn_implementation == "sdpa"
    sdpa = modified_gradient.batch_relevance(bundle, batch, names, eps=1e-6)
    for n in names:
        assert sdpa.signed[n] == pytest.approx(eager.signed[n], rel=1e-4, abs=1e-6), n
        assert sdpa.absolute[n] == pytest.approx(eager.absolute[n], rel=1e-4), n


def test_lrp_table_on_a_llama():
    from kernels.scheme import QuantScheme
    from sensitivity.engine import compute_table

    bundle = _bundle("llama")
    layers = [layer for layer in discover_layers(bundle) if layer.used]
    table = compute_table("lrp", bundle, layers, [(4, 16), (16, 16)], QuantScheme(group_size=16), {},
                          use_cache=False)
    assert table.meta["rules"] == "modified_gradient"
    assert table.meta["params"]["attention"] == "attnlrp"
    r = {n: s["relevance"] for n, s in table.layer_stats.items()}
    assert sum(r.values()) == pytest.approx(1.0) and all(v > 0 for v in r.values())
    assert table.omega["model.layers.0.self_attn.q_proj"][(4, 16)] > 0
