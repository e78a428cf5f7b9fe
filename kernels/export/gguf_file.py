"""A GGUF file of a `gguf-plan` allocation, written with our own encoded blocks (Llama
architecture): `model-bitalloc.gguf` beside the plan, every tensor at its planned
type, laid out as llama.cpp's converter writes a Llama (q/k rows in llama.cpp's rotary
order, a tied head as the token embedding only).

So the plan is not only a recipe for llama-quantize: the file holds exactly the values
the job evaluated, and a GGUF reader (llama.cpp, or transformers'
`from_pretrained(DIR, gguf_file=...)`, which decodes with the `gguf` package) reads
them back. The metadata is the model's hyper-parameters; the tokenizer is not
written (llama.cpp needs one to serve the file; transformers loads the model without
it), so for serving, the plan with llama-quantize stays the way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kernels.export.gguf_plan import build_plan, gguf_arch
from kernels.gguf_quants import encode, gguf_qtype
from kernels.scheme import QuantConfig

GGUF_FILE = "model-bitalloc.gguf"


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's interleaving of the rotary halves of q/k rows (its converter's
    `LlamaModel.permute`; transformers undoes it on load)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def can_write(model: nn.Module) -> bool:
    """True when `model` is an architecture this writer lays out (llama)."""
    import gguf

    try:
        return gguf_arch(model) == gguf.MODEL_ARCH.LLAMA
    except ValueError:
        return False


def write_gguf(model: nn.Module, configs: Mapping[str, QuantConfig], path: str | Path) -> Path:
    """`model` with each layer of `configs` at its GGUF type (`build_plan`) as a GGUF file."""
    import gguf

    arch = gguf_arch(model)
    if arch != gguf.MODEL_ARCH.LLAMA:
        raise ValueError(f"a GGUF file is written for the llama architecture only, not {arch.name.lower()}")
    c = model.config
    path = Path(path)
    heads, kv_heads = c.num_attention_heads, c.num_key_value_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(getattr(c, "_name_or_path", "") or "bitalloc")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(float(getattr(c, "rope_theta", 10000.0)))
    w.add_vocab_size(c.vocab_size)
    params = dict(model.named_parameters())
    for entry in build_plan(model, configs):
        value = params[entry.source].detach().float().cpu()
        if entry.name.endswith("attn_q.weight"):
            value = _permute(value, heads)
        elif entry.name.endswith("attn_k.weight"):
            value = _permute(value, kv_heads)
        if entry.type == "F32":
            w.add_tensor(entry.name, value.numpy().astype(np.float32))
        elif entry.type == "F16":
            w.add_tensor(entry.name, value.half().numpy())
        else:
            raw, _ = encode(value, entry.type)
            w.add_tensor(entry.name, raw, raw_dtype=gguf_qtype(entry.type))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
