"""Conv1D and tied embeddings through the kernels: the packed model computes the
fake-quantized model's function, a Conv1D is quantized along its inputs, a tied
embedding is stored once and packs its LM head with it, and the artifact rebuilds
all of it."""

from __future__ import annotations

import json

import llm_models
import pytest
import torch
from safetensors import safe_open

from kernels.apply import apply_allocation
from kernels.artifact import WEIGHTS_FILE, load_artifact, save_artifact
from kernels.fake_quant import fake_quantize_model, fake_quantize_weight
from kernels.modules import QuantConv1DT, QuantEmbedding, QuantLinear
from kernels.quantizer import fake_quantize
from kernels.scheme import QuantConfig
from sensitivity.layers import discover_layers


def _allocation(model, widths=(2, 3, 4, 5, 6, 8, 16)):
    layers = discover_layers(llm_models.bundle(model))
    return {layer.name: QuantConfig(widths[i % len(widths)], group_size=16)
            for i, layer in enumerate(layers)}


def _ids():
    return torch.randint(0, llm_models.VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))


def test_conv1d_is_quantized_along_its_inputs():
    conv = llm_models.gpt2().transformer.h[0].mlp.c_proj  # (in=128, out=32) stored
    config = QuantConfig(3, group_size=16)
    q = fake_quantize_weight(conv, config)
    assert q.shape == conv.weight.shape
    assert torch.equal(q, fake_quantize(conv.weight.T, config).T)  # groups of 16 inputs per output
    assert not torch.equal(q, fake_quantize(conv.weight, config))


@pytest.mark.parametrize("build", [llm_models.gpt2, llm_models.llama])
def test_packed_model_equals_fake_quantized(build):
    model = build()
    configs = _allocation(model)
    packed = apply_allocation(model, configs)
    fake = fake_quantize_model(model, configs)
    ids = _ids()
    with torch.no_grad():
        a, b = packed(input_ids=ids).logits, fake(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    if build is llm_models.gpt2:
        assert isinstance(packed.transformer.h[0].attn.c_attn, QuantConv1DT)
        head, emb = packed.lm_head, packed.transformer.wte
    else:
        head, emb = packed.lm_head, packed.model.embed_tokens
    if isinstance(emb, QuantEmbedding):  # the tied head packs with its embedding, same buffers
        assert isinstance(head, QuantLinear) and head.qweight is emb.qweight


def test_tied_embedding_is_allocated_once():
    model = llm_models.gpt2()
    configs = _allocation(model)
    with pytest.raises(ValueError, match="shares its weight with lm_head"):
        apply_allocation(model, {**configs, "lm_head": QuantConfig(4)})


@pytest.mark.parametrize("embedding_bits", [4, 16])
def test_artifact_round_trip_stores_the_tied_weight_once(tmp_path, embedding_bits):
    model = llm_models.gpt2()
    configs = {**_allocation(model), "transformer.wte": QuantConfig(embedding_bits, group_size=16)}
    save_artifact(model, configs, tmp_path, {"model": "tiny-gpt2"})
    with safe_open(str(tmp_path / WEIGHTS_FILE), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert not any(k.startswith("lm_head.") for k in keys)  # aliases of the embedding's tensors
    assert json.loads(meta["layers"])["transformer.wte"]["shared_by"] == ["lm_head"]
    assert json.loads(meta["layers"])["transformer.h.0.attn.c_attn"]["shape"] == [96, 32]
    loaded = load_artifact(tmp_path)
    ids = _ids()
    with torch.no_grad():
        want = fake_quantize_model(model, configs)(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
