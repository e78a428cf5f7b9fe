"""The one entry point of the exporters, `write_export(name, …)`: each format is a
module of its own, and `kernels.export.formats` (torch-free) declares what each can
hold, so the job spec and the integer program respect it before solving. Every
export folder also gets `allocation.json`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from kernels.export.formats import export_format
from kernels.quantizer import QuantizedWeight
from kernels.scheme import QuantConfig

ALLOCATION_FILE = "allocation.json"


def write_export(name: str, model: nn.Module, configs: Mapping[str, QuantConfig],
                 directory: str | os.PathLike, allocation_json: dict, tokenizer=None,
                 quantized: Mapping[str, QuantizedWeight] | None = None,
                 gguf_source: str | None = None) -> Path:
    """Write `model` with each layer in `configs` at its config into `directory` in
    format `name`; returns the directory. `quantized`: codes the job's quantizer chose
    (GPTQ, AdaQuant), written as they are; layers without them are rounded to nearest.
    `gguf_source`: the GGUF file the model was read from (gguf-plan requantizes it)."""
    export_format(name)  # unknown names fail here, with the list
    out = Path(directory)
    if name == "bitalloc":
        from kernels.artifact import save_artifact

        return save_artifact(model, configs, out, allocation_json, quantized)
    if name == "gguf-plan":
        from kernels.export.gguf_file import GGUF_FILE, can_write, write_gguf
        from kernels.export.gguf_plan import export_gguf_plan

        export_gguf_plan(model, configs, out, source=gguf_source)
        if can_write(model):  # the evaluated values themselves, readable by any GGUF reader
            write_gguf(model, configs, out / GGUF_FILE)
        (out / ALLOCATION_FILE).write_text(json.dumps(allocation_json, indent=2) + "\n")
        return out
    from kernels.export.compressed_tensors import export_compressed_tensors
    from kernels.export.gptq import export_gptq
    from kernels.layout import quantizer_view
    from kernels.quantizer import quantize

    modules = dict(model.named_modules())
    given = quantized or {}
    codes = {n: given[n] if n in given else quantize(quantizer_view(modules[n]), c)
             for n, c in configs.items() if c.quantized}
    activations = allocation_json.get("activations") or {}
    if name == "compressed-tensors":  # its config groups carry the input quantizers
        export_compressed_tensors(model, codes, out, tokenizer=tokenizer, activations=activations)
    elif activations:
        raise ValueError(f"export {name!r} does not store activation quantization "
                         f"({len(activations)} layers have quantized inputs)")
    else:
        export_gptq(model, codes, out, tokenizer=tokenizer)
    (out / ALLOCATION_FILE).write_text(json.dumps(allocation_json, indent=2) + "\n")
    return out
