"""What every Hugging Face folder export writes: the model's other tensors in fp16
(a tied weight once), the packed tensors, config.json with the format's
`quantization_config`, the generation config and the tokenizer."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

WEIGHTS_FILE = "model.safetensors"


def write_hf_folder(model: nn.Module, replaced: Iterable[str], packed: Mapping[str, torch.Tensor],
                    quantization_config: dict, directory: str | Path, tokenizer=None) -> Path:
    """`model`'s folder with the modules in `replaced` stored as the `packed` tensors."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    dropped = {f"{name}.weight" for name in replaced}
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in model.state_dict().items():
        if key in dropped or tensor.data_ptr() in seen:
            continue  # a tied weight is stored once; config.json re-ties it on load
        seen.add(tensor.data_ptr())
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        tensors[key] = tensor.detach().cpu().contiguous()
    tensors.update(packed)
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["torch_dtype"] = "float16"
    config.pop("dtype", None)
    config["quantization_config"] = quantization_config
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
