"""compressed-tensors `pack-quantized` checkpoints (what llm-compressor writes and
transformers, via the `compressed-tensors` package, and vLLM load).

Per quantized module `<m>`: `<m>.weight_packed` int32 (out, ceil(K·b/32)) — the
codes as one dense little-endian bit stream per row, element i at bit i·b (the
layout of compressed-tensors ≥ 0.20; older releases put 32//b values in a word) —,
`<m>.weight_scale` fp16 (out, K/g), `<m>.weight_zero_point` int32 packed the same
way along the output dimension (ceil(out·b/32), K/g) when asymmetric, and
`<m>.weight_shape` (out, K). The format stores codes and zero points signed (minus
2^(b−1)) before adding the same offset back when packing, so the packed bits are our
unsigned codes and zero points unchanged, and (q − zp)·scale equals our
(code − zero)·scale. config.json gets a `quantization_config` with one config group
per (bits, group size, symmetric); every other tensor is written in fp16.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from kernels.export.bitstream import dense_pack
from kernels.export.hf_folder import write_hf_folder
from kernels.layout import shared_users
from kernels.quantizer import QuantizedWeight

FORMAT = "pack-quantized"


def module_tensors(name: str, q: QuantizedWeight) -> dict[str, torch.Tensor]:
    """The packed tensors of one quantized module."""
    bits = q.config.bits
    out = {f"{name}.weight_packed": dense_pack(q.codes, bits),
           f"{name}.weight_scale": q.scales.to(torch.float16),
           f"{name}.weight_shape": torch.tensor(list(q.codes.shape), dtype=torch.int64)}
    if not q.config.symmetric:
        out[f"{name}.weight_zero_point"] = dense_pack(q.zeros.T.contiguous(), bits).T.contiguous()
    return out


def quantization_config(quantized: Mapping[str, QuantizedWeight]) -> dict:
    """The `quantization_config` of config.json: one group per (bits, group, symmetric)."""
    groups: dict[tuple[int, int, bool], list[str]] = {}
    for name, q in sorted(quantized.items()):
        k = q.codes.shape[1]
        groups.setdefault((q.config.bits, q.config.group_size_for(k), q.config.symmetric),
                          []).append(name)
    config_groups = {}
    for i, ((bits, group, symmetric), names) in enumerate(sorted(groups.items())):
        config_groups[f"group_{i}"] = {
            "targets": [f"re:^{n.replace('.', '[.]')}$" for n in names],
            "weights": {"num_bits": bits, "type": "int", "symmetric": symmetric,
                        "strategy": "group", "group_size": group, "dynamic": False,
                        "observer": "minmax"},
            "input_activations": None, "output_activations": None,
        }
    return {"quant_method": "compressed-tensors", "format": FORMAT,
            "quantization_status": "compressed", "config_groups": config_groups, "ignore": []}


def check_exportable(model: nn.Module, quantized: Mapping[str, QuantizedWeight]) -> None:
    """Refuse what the format cannot hold, naming the layers."""
    modules = dict(model.named_modules())
    problems = []
    for name, q in quantized.items():
        module = modules.get(name)
        if not isinstance(module, (nn.Linear, nn.Embedding)):
            problems.append(f"{name} is a {type(module).__name__} (compressed-tensors packs "
                            "Linear and Embedding weights)")
            continue
        if shared_users(model, name):
            problems.append(f"{name} shares its weight with {', '.join(shared_users(model, name))} "
                            "(tied embeddings stay in 16 bits in this format)")
        k = q.codes.shape[1]
        if k % q.config.group_size_for(k):
            problems.append(f"{name} has {k} inputs, not a multiple of its group size "
                            f"{q.config.group_size} (compressed-tensors needs whole groups)")
        if q.config.bits > 8:
            problems.append(f"{name} at {q.config.bits} bits (1-8 only)")
    if problems:
        raise ValueError("cannot export to compressed-tensors: " + "; ".join(problems))


def export_compressed_tensors(model: nn.Module, quantized: Mapping[str, QuantizedWeight],
                              directory: str | Path, tokenizer=None) -> Path:
    """Write `model` (a transformers PreTrainedModel) with the modules in `quantized`
    packed into a complete Hugging Face folder at `directory` (config.json, weights,
    generation config, and the tokenizer when given). Layers not in `quantized` are
    written in fp16. Returns the folder."""
    check_exportable(model, quantized)
    tensors: dict[str, torch.Tensor] = {}
    for name, q in quantized.items():
        tensors.update(module_tensors(name, q))
    return write_hf_folder(model, quantized, tensors, quantization_config(quantized), directory,
                           tokenizer)
