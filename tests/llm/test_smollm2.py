"""The built-in smollm2-135m: the Q4_1 GGUF of SmolLM2-135M-Instruct loads through
transformers as the Llama it is, and (dequantized to fp32) still answers."""

from __future__ import annotations

import torch

from sensitivity.catalog import BUILTIN_MODELS
from sensitivity.layers import quantizable_modules


def test_architecture(smollm2):
    model, _, facts = smollm2
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert config.num_hidden_layers == 30 and len(model.model.layers) == 30
    assert config.num_attention_heads == 9 and config.num_key_value_heads == 3  # grouped-query
    assert config.hidden_act == "silu" and config.intermediate_size == 1536  # SwiGLU
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not hasattr(config, "quantization_config")  # plain fp32 weights now
    modules = quantizable_modules(model)
    assert len(modules) == 1 + 30 * 7 and "lm_head" not in modules
    assert len(facts["gguf_sha256"]) == 64
    assert BUILTIN_MODELS["smollm2-135m"].family == "causal-lm"


def test_greedy_answer(smollm2, single_thread):
    model, tokenizer, _ = smollm2
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids if torch.is_tensor(ids) else ids["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
