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
per (bits, group size, symmetric, input scheme); every other tensor is written in fp16.

Quantized inputs (a layer's a_bits < 16; `kernels.activation` records, `allocation.json` →
`activations`) become the group's `input_activations`:

* dynamic per-token ranges: `{"type": "int", "strategy": "token", "dynamic": true,
  "symmetric": ...}`, no tensors (the runtime computes each token's scale);
* static per-tensor ranges: `{"strategy": "tensor", "dynamic": false, ...}` with
  `<m>.input_scale` (1,) fp32 and, for asymmetric inputs, `<m>.input_zero_point` (1,) int8
  (our zero point minus 2^(a−1): the format's signed codes are ours minus 2^(a−1), so
  (q − zp)·s is unchanged).

Symmetric inputs differ in one place: the format's codes span [−2^(a−1), 2^(a−1) − 1] and
compressed-tensors' own dynamic quantizer takes s = max|x| / (2^(a−1) − ½), where ours (and,
as far as we know, vLLM's dynamic int8 kernel) takes max|x| / (2^(a−1) − 1) with codes
±(2^(a−1) − 1); static
scales are ours (the loader casts them to the model's dtype: fp16 unless asked). The format
holds quantized inputs of layers whose weights it packs (Linear), at most 8 bits; anything
else is refused (`check_exportable`).
"""

from __future__ import annotations

import json
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


def input_activation_args(record: Mapping) -> dict:
    """The `input_activations` QuantizationArgs of one layer's input quantizer record
    (`kernels.activation.ActivationQuantizer.record`)."""
    bits, mode = int(record["bits"]), record["mode"]
    if mode == "dynamic":
        return {"num_bits": bits, "type": "int", "symmetric": bool(record["symmetric"]),
                "strategy": "token", "dynamic": True, "observer": None}
    return {"num_bits": bits, "type": "int", "symmetric": bool(record["symmetric"]),
            "strategy": "tensor", "dynamic": False, "observer": "minmax"}


def input_tensors(name: str, record: Mapping) -> dict[str, torch.Tensor]:
    """The static input quantizer's scale (fp32, as calibrated) and, for asymmetric inputs,
    its zero point; nothing for dynamic ranges."""
    if record["mode"] == "dynamic":
        return {}
    out = {f"{name}.input_scale": torch.tensor([record["scale"]], dtype=torch.float32)}
    if not record["symmetric"]:
        zero = int(round(record["zero"])) - 2 ** (int(record["bits"]) - 1)
        out[f"{name}.input_zero_point"] = torch.tensor([zero], dtype=torch.int8)
    return out


def quantization_config(quantized: Mapping[str, QuantizedWeight],
                        activations: Mapping[str, Mapping] | None = None) -> dict:
    """The `quantization_config` of config.json: one group per (bits, group, symmetric,
    input scheme); `activations`: the input quantizer records of layers at a_bits < 16."""
    activations = activations or {}
    groups: dict[tuple, list[str]] = {}
    for name, q in sorted(quantized.items()):
        k = q.codes.shape[1]
        inputs = (json.dumps(input_activation_args(activations[name]), sort_keys=True)
                  if name in activations else "")
        groups.setdefault((q.config.bits, q.config.group_size_for(k), q.config.symmetric, inputs),
                          []).append(name)
    config_groups = {}
    for i, ((bits, group, symmetric, inputs), names) in enumerate(sorted(groups.items())):
        config_groups[f"group_{i}"] = {
            "targets": [f"re:^{n.replace('.', '[.]')}$" for n in names],
            "weights": {"num_bits": bits, "type": "int", "symmetric": symmetric,
                        "strategy": "group", "group_size": group, "dynamic": False,
                        "observer": "minmax"},
            "input_activations": json.loads(inputs) if inputs else None,
            "output_activations": None,
            # named per group: the loader otherwise infers int-quantized (unpacked int8
            # weights) for a group with 8-bit weights and 8-bit inputs
            "format": FORMAT,
        }
    return {"quant_method": "compressed-tensors", "format": FORMAT,
            "quantization_status": "compressed", "config_groups": config_groups, "ignore": []}


def check_exportable(model: nn.Module, quantized: Mapping[str, QuantizedWeight],
                     activations: Mapping[str, Mapping] | None = None) -> None:
    """Refuse what the format cannot hold, naming the layers."""
    modules = dict(model.named_modules())
    problems = []
    for name, record in sorted((activations or {}).items()):
        if name not in quantized:
            problems.append(f"{name} has a {record['bits']}-bit input and 16-bit weights "
                            "(pack-quantized holds input quantization of layers whose weights "
                            "it packs)")
        elif not isinstance(modules.get(name), nn.Linear):
            problems.append(f"{name}'s input is quantized but it is a "
                            f"{type(modules.get(name)).__name__} (inputs of Linear layers only)")
        elif int(record["bits"]) > 8 or record["mode"] not in ("static", "dynamic"):
            problems.append(f"{name}: a {record['bits']}-bit {record['mode']} input "
                            "(integer inputs of 1-8 bits, static per tensor or dynamic per token)")
        elif record["mode"] == "static" and record.get("scale") is None:
            problems.append(f"{name}: a static input quantizer without its scale")
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
                              directory: str | Path, tokenizer=None,
                              activations: Mapping[str, Mapping] | None = None) -> Path:
    """Write `model` (a transformers PreTrainedModel) with the modules in `quantized`
    packed into a complete Hugging Face folder at `directory` (config.json, weights,
    generation config, and the tokenizer when given). Layers not in `quantized` are
    written in fp16; `activations`: the input quantizer records of layers at a_bits < 16
    (their `input_activations`, and the static scales). Returns the folder."""
    check_exportable(model, quantized, activations)
    tensors: dict[str, torch.Tensor] = {}
    for name, q in quantized.items():
        tensors.update(module_tensors(name, q))
    for name, record in (activations or {}).items():
        tensors.update(input_tensors(name, record))
    return write_hf_folder(model, quantized, tensors, quantization_config(quantized, activations),
                           directory, tokenizer)
