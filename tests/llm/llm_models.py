"""Tiny random causal language models built in the test (no downloads): GPT-2
(transformers' Conv1D projections, tied embeddings), Llama (grouped-query
attention, SwiGLU, RMSNorm, rotary positions) and Qwen2 (biased q/k/v, its own
LM head), saved as Hugging Face folders with a small byte-level BPE tokenizer
trained on the repo's prose, or (Llama) written as a GGUF file with the `gguf`
package the way llama.cpp's converter lays it out."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sensitivity.models import causal_lm
from sensitivity.models.hf import load_hf_tokenizer  # noqa: F401  (USE_HUB_KERNELS before transformers)

VOCAB = 300


def gpt2(seed: int = 0, layers: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=layers, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                        eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def llama(seed: int = 0, tied: bool = True, hidden: int = 32, intermediate: int = 48, blocks: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=blocks,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tied)
    return LlamaForCausalLM(config).eval()


def qwen2(seed: int = 0, tied: bool = False):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tied)
    return Qwen2ForCausalLM(config).eval()


def tokenizer():
    """A byte-level BPE tokenizer of `VOCAB` tokens trained on the built-in prose."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from sensitivity.data.prose import load_prose

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([load_prose().calibration], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def save_folder(model, folder: Path, with_tokenizer: bool = True) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    if with_tokenizer:
        tokenizer().save_pretrained(folder)
    return folder


def token_batches(n: int, length: int, batch: int, seed: int = 0, pad_last: int = 0):
    """Random token batches; the last `pad_last` positions of every other row padded."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, length), generator=gen)
    mask = torch.ones_like(ids)
    if pad_last:
        mask[1::2, -pad_last:] = 0
    return [{"input_ids": ids[i:i + batch], "attention_mask": mask[i:i + batch]}
            for i in range(0, n, batch)]


def token_dataset(folder: Path, rows: int, length: int, seed: int = 0):
    """An uploaded token dataset (`inputs`: random ids) written into `folder`."""
    from safetensors.torch import save_file

    from sensitivity.sources import DataSource

    path = folder / "ids.safetensors"
    ids = torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))
    save_file({"inputs": ids}, str(path))
    return DataSource("ids", "safetensors", path)


def bundle(model, name: str = "tiny-lm", calibration=None, evaluation=None):
    calibration = calibration or token_batches(4, 12, 2, seed=1, pad_last=3)
    evaluation = evaluation or token_batches(4, 12, 2, seed=2, pad_last=2)
    return causal_lm.causal_lm_bundle(name, model, calibration, evaluation, description=name)


def config_json(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _permute(w, heads: int):
    """llama.cpp's interleaving of the rotary halves of q/k rows (transformers undoes it)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, tok, path: Path) -> Path:
    """A tied Llama as an fp32 GGUF file with its BPE tokenizer in the metadata."""
    import gguf
    import numpy as np

    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(0)
    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_pad_token_id(0)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm"}
    for i in range(c.num_hidden_layers):
        names.update({f"model.layers.{i}.{hf}.weight": f"blk.{i}.{g}.weight" for hf, g in parts.items()})
    for key, value in model.state_dict().items():
        if key not in names:  # the tied LM head
            continue
        a = value.numpy().astype(np.float32)
        if key.endswith("q_proj.weight"):
            a = _permute(a, c.num_attention_heads)
        if key.endswith("k_proj.weight"):
            a = _permute(a, c.num_key_value_heads)
        w.add_tensor(names[key], a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
