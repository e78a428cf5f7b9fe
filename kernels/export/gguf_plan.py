"""The `gguf-plan` export: llama.cpp's per-tensor type plan of an allocation.

Every tensor of the model gets a GGUF type under the name llama.cpp's converter
(`convert_hf_to_gguf.py`) gives it for the architecture (gguf-py's `TensorNameMap`,
e.g. `model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`): a quantized
layer the type of its width and row length (`kernels.scheme.gguf_type`, the type the
sensitivity and the evaluation measured), a layer left at 16 bits F16, norms and
other 1-D tensors F32 (llama-quantize never quantizes them). A tied LM head is the
token embedding (the converter writes no `output.weight` then).

Files written:

* `tensor-types.txt`: one `pattern=type` per line, the input of llama-quantize's
  `--tensor-type-file`. llama-quantize reads each pattern as a regular expression,
  searches it in the tensor name and takes the first that matches, so each line is the
  exact name anchored and escaped (`^blk\\.3\\.attn_q\\.weight$=q4_k`): a bare
  `output.weight` would also match `blk.3.attn_output.weight`. The file has nothing
  else (llama-quantize has no comment syntax).
* `llama-quantize.sh`: the converter call that writes the F16 GGUF the plan applies to,
  and the exact llama-quantize command (for a model read from a GGUF file, such as
  smollm2-135m's Q4_1 file, that file requantized with `--allow-requantize`).
* `gguf-plan.json`: every tensor's name, type, shape and bytes, the plan's size (the sum
  of the types' sizes) and the commands.
* `model-bitalloc.gguf` (Llama models; `kernels.export.gguf_file`): the allocation itself,
  every tensor encoded at its planned type by our encoders, no tokenizer.

The base type of the command is the ftype of the type holding most weights (a
quantized one: llama-quantize applies `--tensor-type` overrides only when the base
type is quantized); every quantizable tensor is named in the plan, so the base type
decides none of them.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from kernels.layout import quantizer_view
from kernels.scheme import GGUF_TYPES, QuantConfig, gguf_type, gguf_widths

PLAN_FILE = "tensor-types.txt"
COMMAND_FILE = "llama-quantize.sh"
PLAN_JSON = "gguf-plan.json"
F16_GGUF = "model-f16.gguf"
OUT_GGUF = "model-bitalloc.gguf"

# Hugging Face model_type -> gguf-py's MODEL_ARCH member, as convert_hf_to_gguf.py maps
# them (Mistral is written as the llama architecture)
ARCHITECTURES = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2", "qwen3": "QWEN3"}
# llama-quantize's ftype name for a plan whose largest type is this one (tools/quantize:
# QUANT_OPTIONS); F16 is no base: overrides apply only under a quantized one
BASE_FTYPES = {"Q2_K": "Q2_K", "Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M",
               "Q6_K": "Q6_K", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0",
               "Q5_1": "Q5_1", "Q8_0": "Q8_0"}


@dataclass(frozen=True)
class PlanEntry:
    name: str  # the GGUF tensor name
    type: str  # the GGUF type, e.g. "Q4_K"
    shape: tuple[int, ...]  # the PyTorch shape (GGUF lists it reversed)
    bytes: int
    source: str  # the PyTorch parameter name


def gguf_arch(model: nn.Module):
    """The gguf-py architecture llama.cpp's converter writes `model` as; ValueError
    naming the supported ones otherwise."""
    import gguf

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        what = f"model_type {model_type!r}" if model_type else f"a {type(model).__name__}"
        raise ValueError(f"export 'gguf-plan' names tensors as llama.cpp's converter writes them "
                         f"for {', '.join(sorted(ARCHITECTURES))} models; this is {what}")
    return gguf.MODEL_ARCH[ARCHITECTURES[model_type]]


def tensor_names(model: nn.Module) -> dict[str, str]:
    """{PyTorch parameter name: GGUF tensor name} for every parameter (a tied weight once,
    under the name it first has: the token embedding)."""
    import gguf

    arch = gguf_arch(model)
    blocks = int(model.config.num_hidden_layers)
    names = gguf.get_tensor_name_map(arch, blocks)
    out, unknown = {}, []
    for name, _ in model.named_parameters():
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            unknown.append(name)
        else:
            out[name] = gname
    if unknown:
        raise ValueError(f"export 'gguf-plan': llama.cpp's {arch.name.lower()} tensors have no name "
                         f"for {len(unknown)} parameters ({', '.join(unknown[:4])}"
                         f"{', …' if len(unknown) > 4 else ''})")
    return out


def build_plan(model: nn.Module, configs: Mapping[str, QuantConfig]) -> list[PlanEntry]:
    """The GGUF type of every tensor of `model`; `configs`: {layer module name: config}
    of the quantizable layers (16 bits: F16)."""
    modules = dict(model.named_modules())
    unknown = sorted(set(configs) - set(modules))
    if unknown:
        raise ValueError(f"no such layers in the model: {', '.join(unknown)}")
    by_param = {id(modules[n].weight): (n, c) for n, c in configs.items()}
    names = tensor_names(model)
    plan = []
    for pname, param in model.named_parameters():
        shape = tuple(param.shape)
        if id(param) in by_param:
            layer, config = by_param[id(param)]
            rows, k = quantizer_view(modules[layer]).reshape(shape[0], -1).shape
            if config.bits not in gguf_widths(k):
                raise ValueError(f"layer {layer}: rows of {k} weights take GGUF types at "
                                 f"{list(gguf_widths(k))} bits, not {config.bits}")
            t = gguf_type(config.bits, k)
        elif param.dim() < 2:
            t, rows, k = GGUF_TYPES["F32"], 1, param.numel()
        else:  # a matrix outside the quantizable layers (unused): as the converter writes it
            t, rows, k = GGUF_TYPES["F16"], shape[0], math.prod(shape[1:])
        if not t.fits(k):  # gguf_type never gives such a type; a plan must never hold one
            raise ValueError(f"{names[pname]}: {t.name} needs rows of whole {t.block}-blocks, "
                             f"not {k}")
        plan.append(PlanEntry(names[pname], t.name, shape, rows * (k // t.block) * t.block_bytes,
                              pname))
    return plan


def plan_lines(plan: list[PlanEntry]) -> str:
    """The `--tensor-type-file` text: `^escaped name$=type`, one per line."""
    return "".join(f"^{re.escape(e.name)}$={e.type.lower()}\n" for e in plan)


def parse_plan_lines(text: str) -> dict[str, str]:
    """{tensor name: TYPE} back from `plan_lines` text."""
    out = {}
    for token in text.split():
        pattern, _, qtype = token.rpartition("=")
        if not (pattern.startswith("^") and pattern.endswith("$")):
            raise ValueError(f"not an anchored plan line: {token!r}")
        out[re.sub(r"\\(.)", r"\1", pattern[1:-1])] = qtype.upper()
    return out


def base_ftype(plan: list[PlanEntry]) -> str:
    """The llama-quantize ftype of the quantized type holding the most weights (Q8_0 if
    none is quantized)."""
    weights = Counter()
    for e in plan:
        if e.type in BASE_FTYPES:
            weights[e.type] += math.prod(e.shape)
    return BASE_FTYPES[weights.most_common(1)[0][0]] if weights else "Q8_0"


def commands(plan: list[PlanEntry], source: str | None = None) -> dict[str, str]:
    """The converter call and the exact llama-quantize command; `source`: the GGUF file the
    model was read from (its values are the job's reference), requantized directly."""
    base = base_ftype(plan)
    if source is not None:
        return {"quantize": f"llama-quantize --allow-requantize --tensor-type-file {PLAN_FILE} "
                            f"{source} {OUT_GGUF} {base}",
                "serve": f"llama-server -m {OUT_GGUF}"}
    return {
        "convert": f"python convert_hf_to_gguf.py MODEL_DIR --outtype f16 --outfile {F16_GGUF}",
        "quantize": f"llama-quantize --tensor-type-file {PLAN_FILE} {F16_GGUF} {OUT_GGUF} {base}",
        "serve": f"llama-server -m {OUT_GGUF}",
    }


def export_gguf_plan(model: nn.Module, configs: Mapping[str, QuantConfig],
                     directory: str | Path, source: str | None = None) -> Path:
    """Write the plan of `configs` (see the module docstring) into `directory`; `source`:
    the GGUF file the model was read from (smollm2-135m's Q4_1 file), which the command
    then requantizes instead of the converter's F16 file."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    plan = build_plan(model, configs)
    cmd = commands(plan, source)
    (out / PLAN_FILE).write_text(plan_lines(plan))
    if source is None:
        steps = ("# 1. the F16 GGUF the plan applies to (llama.cpp's converter; MODEL_DIR: the Hugging\n"
                 "#    Face folder of the model)\n"
                 f"{cmd['convert']}\n"
                 "# 2. every tensor at its planned type\n")
    else:
        steps = (f"# every tensor of {source} (the GGUF file the job read: its values are the\n"
                 "# full-precision reference) requantized at its planned type\n")
    (out / COMMAND_FILE).write_text(f"#!/bin/sh\n{steps}{cmd['quantize']}\n# serve it: {cmd['serve']}\n")
    size = sum(e.bytes for e in plan)
    types = Counter(e.type for e in plan)
    (out / PLAN_JSON).write_text(json.dumps({
        "size_bytes": size,
        "tensors": [{**asdict(e), "shape": list(e.shape)} for e in plan],
        "types": dict(sorted(types.items())),
        "base_ftype": base_ftype(plan),
        "source": source,
        "commands": cmd,
    }, indent=2) + "\n")
    return out
