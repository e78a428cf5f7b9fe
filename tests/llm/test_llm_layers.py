"""Layer discovery on causal LMs: every projection found (GPT-2's Conv1D included),
tied embeddings one unit counted once, an untied LM head its own layer, fused
projection ties on request, and the silent-skip guard."""

from __future__ import annotations

import llm_models
import pytest
import torch
from torch import nn

from kernels.scheme import QuantScheme
from sensitivity.layers import discover_layers, fused_groups
from workers.accounting import fixed_bytes, stored_bytes, totals


def _names(layers):
    return [layer.name for layer in layers]


def test_gpt2_every_conv1d_projection_and_the_tied_embedding_once():
    model = llm_models.gpt2(layers=2)
    layers = discover_layers(llm_models.bundle(model))
    by_name = {layer.name: layer for layer in layers}
    expected = ["transformer.wte", "transformer.wpe"] + [
        f"transformer.h.{i}.{p}" for i in range(2)
        for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert sorted(by_name) == sorted(expected)
    assert "lm_head" not in by_name
    wte = by_name["transformer.wte"]
    assert wte.shared_by == ("lm_head",) and wte.kind == "embedding"
    # Conv1D records the quantizer's (out, in) shape, not the stored (in, out)
    c_attn = by_name["transformer.h.0.attn.c_attn"]
    assert c_attn.kind == "hf_conv1d" and c_attn.shape == (96, 32)
    assert model.transformer.h[0].attn.c_attn.weight.shape == (32, 96)
    tokens = 12  # per sample, over the padded sequence
    assert c_attn.macs == tokens * 32 * 96
    assert wte.macs == tokens * 32 * llm_models.VOCAB  # the head's matmul
    assert by_name["transformer.h.1.mlp.c_proj"].shape == (32, 128)
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.transformer.wte.weight


def test_tied_weight_bytes_count_once():
    model = llm_models.llama(tied=True)
    bundle = llm_models.bundle(model)
    layers = discover_layers(bundle)
    unique_params = sum(p.numel() for p in model.parameters())  # parameters() dedupes the tie
    norms = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 1)
    assert sum(layer.params for layer in layers) + norms == unique_params
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # rotary frequencies
    assert fixed_bytes(model, layers) == 4 * norms + buffers
    scheme = QuantScheme()
    sixteen = totals(layers, {layer.name: (16, 16) for layer in layers}, scheme, fixed_bytes(model, layers))
    assert sixteen.size_bytes == 2 * (unique_params - norms) + 4 * norms + buffers
    assert stored_bytes(model) == 4 * unique_params + buffers


@pytest.mark.parametrize("build", [llm_models.llama, llm_models.qwen2])
def test_llama_and_qwen2_every_projection(build):
    model = build(tied=False)
    layers = discover_layers(llm_models.bundle(model))
    names = _names(layers)
    projections = [f"model.layers.{i}.{p}" for i in range(2) for p in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    assert names == ["model.embed_tokens"] + projections + ["lm_head"]
    by_name = {layer.name: layer for layer in layers}
    assert by_name["lm_head"].shared_by == () and by_name["lm_head"].kind == "linear"
    assert by_name["model.layers.0.self_attn.k_proj"].shape == (16, 32)  # 2 KV heads of 8
    assert all(layer.used for layer in layers)
    assert bundle_info_share(model) == 100.0


def bundle_info_share(model) -> float:
    bundle = llm_models.bundle(model)
    discover_layers(bundle)
    assert bundle.info["matmul_weights_left_out"] == "none"
    return bundle.info["quantizable_share_pct"]


def test_fused_projection_ties_are_an_option():
    bundle = llm_models.bundle(llm_models.llama())
    assert all(layer.group is None for layer in discover_layers(bundle))
    layers = {layer.name: layer for layer in discover_layers(bundle, fused=True)}
    q = "model.layers.1.self_attn.q_proj"
    assert layers["model.layers.1.self_attn.v_proj"].group == q
    assert layers["model.layers.1.mlp.up_proj"].group == "model.layers.1.mlp.gate_proj"
    assert layers["model.layers.1.mlp.down_proj"].group is None
    assert fused_groups(["a.q_proj", "a.k_proj"]) == []  # only complete sets


class _MyProjection(nn.Module):
    """A matmul bitalloc does not know."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(n_in, n_out) * 0.1)

    def forward(self, x):
        return x @ self.kernel


def test_the_guard_fails_a_model_whose_matmuls_are_unknown():
    model = llm_models.llama()
    for block in model.model.layers:  # every MLP matmul replaced by an unknown module
        block.mlp.gate_proj = _MyProjection(32, 48)
        block.mlp.up_proj = _MyProjection(32, 48)
        block.mlp.down_proj = _MyProjection(48, 32)
    bundle = llm_models.bundle(model)
    with pytest.raises(ValueError, match=r"_MyProjection \(9,216 params\)") as err:
        discover_layers(bundle)
    assert "% of the matmul-weight parameters" in str(err.value)
    assert bundle.info["quantizable_share_pct"] < 90
