"""GPTQ checkpoints with per-module bits (what vLLM's `gptq` method serves).

Per quantized Linear `<m>`: `<m>.qweight` int32 (K·b/32, out) — the codes packed
along the input, a dense little-endian stream (32/b values per word for 2/4/8 bits,
32 values in three words for 3 bits) —, `<m>.qzeros` int32 (K/g, out·b/32) packed the
same way along the output, `<m>.scales` fp16 (K/g, out), `<m>.g_idx` int32 (K,) =
k // g (no activation reordering). `checkpoint_format: "gptq_v2"` stores the true
zero point (the v1 format stores zero − 1, which overflows for a zero of 0).

Mixed bits go in `quantize_config.json` (and config.json's `quantization_config`) as
`dynamic` overrides, `"+:regex": {"bits": b}`, and `"-:regex": {}` for layers left
unquantized. The regexes also match vLLM's fused modules (`qkv_proj`,
`gate_up_proj`), whose parts the allocation ties. The top level is `sym: false` unless
every quantized layer is symmetric at one width of 4 or 8 bits: vLLM picks its Marlin
kernel from the top-level `bits`/`sym` alone, and a `dynamic` 3-bit layer under a
4-bit symmetric top level then fails to load.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from kernels.export.bitstream import dense_pack
from kernels.export.hf_folder import write_hf_folder
from kernels.quantizer import QuantizedWeight

FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
         "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}


def module_tensors(name: str, q: QuantizedWeight) -> dict[str, torch.Tensor]:
    bits = q.config.bits
    out_features, k = q.codes.shape
    g = q.config.group_size_for(k)
    return {
        f"{name}.qweight": dense_pack(q.codes, bits).T.contiguous(),
        f"{name}.qzeros": dense_pack(q.zeros.T.contiguous(), bits),
        f"{name}.scales": q.scales.T.to(torch.float16).contiguous(),
        f"{name}.g_idx": (torch.arange(k, dtype=torch.int32) // g),
    }


def module_regex(name: str) -> str:
    """A regex for `name` that also matches vLLM's fused module holding it."""
    parent, _, leaf = name.rpartition(".")
    prefix = re.escape(parent) + r"\." if parent else ""
    if leaf in FUSED:
        return f"^{prefix}({re.escape(leaf)}|{FUSED[leaf]})$"
    return f"^{prefix}{re.escape(leaf)}$"


def quantize_config(quantized: Mapping[str, QuantizedWeight], unquantized: list[str]) -> dict:
    widths = Counter(q.config.bits for q in quantized.values())
    groups = {q.config.group_size for q in quantized.values()}
    if len(groups) > 1:
        raise ValueError(f"a GPTQ checkpoint has one group size; got {sorted(groups)}")
    top = widths.most_common(1)[0][0]
    marlin = (len(widths) == 1 and top in (4, 8)
              and all(q.config.symmetric for q in quantized.values()))
    dynamic = {f"+:{module_regex(n)}": {"bits": q.config.bits}
               for n, q in sorted(quantized.items()) if q.config.bits != top}
    dynamic.update({f"-:{module_regex(n)}": {} for n in sorted(unquantized)})
    return {"quant_method": "gptq", "bits": top, "group_size": groups.pop(), "sym": marlin,
            "desc_act": False, "checkpoint_format": "gptq_v2", "dynamic": dynamic,
            "true_sequential": True, "damp_percent": 0.01}


def check_exportable(model: nn.Module, quantized: Mapping[str, QuantizedWeight]) -> None:
    modules = dict(model.named_modules())
    problems = []
    for name, q in quantized.items():
        if not isinstance(modules.get(name), nn.Linear):
            problems.append(f"{name} is a {type(modules.get(name)).__name__} (GPTQ packs "
                            "Linear layers)")
            continue
        k = q.codes.shape[1]
        if q.config.bits not in (2, 3, 4, 8):
            problems.append(f"{name} at {q.config.bits} bits (vLLM's gptq serves 2, 3, 4, 8)")
        if k % 32 or k % q.config.group_size_for(k):
            problems.append(f"{name} has {k} inputs (a multiple of 32 and of the group size "
                            "is needed)")
    if problems:
        raise ValueError("cannot export to GPTQ: " + "; ".join(problems))


def export_gptq(model: nn.Module, quantized: Mapping[str, QuantizedWeight],
                directory: str | Path, tokenizer=None) -> Path:
    """A Hugging Face folder with the GPTQ checkpoint of `model`; the Linear layers in
    `quantized` packed, everything else in fp16. Returns the folder."""
    check_exportable(model, quantized)
    tensors: dict[str, torch.Tensor] = {}
    for name, q in quantized.items():
        tensors.update(module_tensors(name, q))
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    qc = quantize_config(quantized, [n for n in linears if n not in quantized])
    out = write_hf_folder(model, quantized, tensors, qc, directory, tokenizer)
    (out / "quantize_config.json").write_text(json.dumps(qc, indent=2) + "\n")
    return out
