"""Block-streamed forward passes against the whole model: the same logits on tiny
Llama (tied and untied), Qwen2 and Mistral folders, single-file and sharded."""

from __future__ import annotations

import json

import llm_models
import pytest
import torch

from sensitivity.models.causal_lm import forward
from sensitivity.models.lm_loading import load_hf_causal_lm
from sensitivity.streaming.skeleton import StreamedCausalLM
from sensitivity.streaming.store import INDEX, SafetensorsStore


def mistral(seed: int = 0):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    config = MistralConfig(vocab_size=llm_models.VOCAB, hidden_size=32, intermediate_size=48,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=64, sliding_window=None)
    return MistralForCausalLM(config).eval()


BUILDS = {"llama-tied": lambda: llm_models.llama(tied=True),
          "llama": lambda: llm_models.llama(tied=False),
          "qwen2": llm_models.qwen2, "mistral": mistral}


@pytest.mark.parametrize("kind", list(BUILDS))
def test_streamed_logits_equal_the_whole_model(kind, tmp_path):
    folder = llm_models.save_folder(BUILDS[kind](), tmp_path / kind, with_tokenizer=False)
    whole, _ = load_hf_causal_lm(folder)
    lm = StreamedCausalLM(folder)
    assert lm.tied == (kind == "llama-tied")
    assert all(p.is_meta for p in lm.blocks.parameters())
    for batch in llm_models.token_batches(4, 12, 2, seed=1, pad_last=3):
        with torch.no_grad():
            want = forward(whole, batch)
        torch.testing.assert_close(lm.logits(batch), want, rtol=0, atol=0)
    assert all(p.is_meta for p in lm.blocks.parameters())  # every block released


def test_sharded_folder_reads_through_its_index(tmp_path):
    model = llm_models.llama(tied=False)
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="20KB")
    assert (folder / INDEX).is_file()
    assert len(set(json.loads((folder / INDEX).read_text())["weight_map"].values())) > 1
    store = SafetensorsStore(folder)
    state = model.state_dict()
    assert set(store.names()) == set(state)
    for name in store.names():
        assert torch.equal(store.read(name), state[name])
    whole, _ = load_hf_causal_lm(folder)  # eager attention, as the streamed blocks
    batch = llm_models.token_batches(2, 10, 2, seed=3)[0]
    with torch.no_grad():
        torch.testing.assert_close(StreamedCausalLM(folder).logits(batch), forward(whole, batch),
                                   rtol=0, atol=0)


def test_bf16_weights_compute_in_fp32(tmp_path):
    model = llm_models.llama(tied=False).to(torch.bfloat16)
    folder = llm_models.save_folder(model, tmp_path / "bf16", with_tokenizer=False)
    lm = StreamedCausalLM(folder)
    assert lm.decoder.embed_tokens.weight.dtype == torch.float32
    whole, _ = load_hf_causal_lm(folder)
    batch = llm_models.token_batches(2, 10, 2, seed=3)[0]
    with torch.no_grad():
        torch.testing.assert_close(lm.logits(batch), forward(whole, batch), rtol=0, atol=0)
