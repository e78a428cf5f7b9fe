"""The packed model artifact: a directory with `model.safetensors` and `allocation.json`.

`model.safetensors` holds the packed model's state dict: `<layer>.qweight`, `.scales`,
`.zeros` (+ `.bias`) for packed layers (`kernels.packed_weight`), every other tensor
unchanged, and the weights of 16-bit layers in 16 bits (fp16, or bf16 when the model is
bf16), as the size accounting counts them. Its metadata (strings) holds:

* `format` = "bitalloc.packed", `format_version` = "1", `packing` (the layout in words);
* `layers`: JSON {name: {kind, shape, bits, group_size, symmetric, mse_clip}, plus
  `shared_by` (the modules holding the same weight, e.g. a tied LM head) where there are
  any}; `shape` is the quantizer view's (out, in) for transformers' Conv1D;
* `allocation`: the allocation JSON given to `save_artifact`;
* `aliases`: JSON {key: key it shares storage with} (stored once);
* `hf_class`, `hf_config`, `float_dtype`: for a Hugging Face model, what
  `load_artifact` needs to rebuild it without an architecture constructor.

Only safetensors is read: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from kernels.activation import ActivationQuantizer
from kernels.apply import (
    PACKED_TYPES,
    apply_allocation,
    attach_input_quantizers,
    empty_packed_module,
    layer_kind,
    sharing_module,
)
from kernels.layout import logical_shape, shared_users
from kernels.quantizer import QuantizedWeight, sixteen_bit_dtype
from kernels.scheme import QuantConfig

FORMAT = "bitalloc.packed"
FORMAT_VERSION = "1"
WEIGHTS_FILE = "model.safetensors"
ALLOCATION_FILE = "allocation.json"
PACKING = ("codes packed along K into int32 words, K padded to a multiple of 32; "
           "b bits split into power-of-two bit planes (3 = 2+1, 5 = 4+1, 6 = 4+2) stacked "
           "along K, so 32 values take b words (GPTQ layout for 2, 4, 8 bits); fp16 scales "
           "(groups, N); zero points packed along N the same way (groups, N_pad*b/32)")


def save_artifact(model: nn.Module, configs: Mapping[str, QuantConfig],
                  directory: str | os.PathLike, allocation_json: dict,
                  quantized: Mapping[str, QuantizedWeight] | None = None,
                  packed: nn.Module | None = None) -> Path:
    """Pack `model` with `configs` (see `kernels.apply.apply_allocation`; `quantized`:
    codes the job's quantizer chose, packed as they are) and write the artifact into
    `directory` (created if missing). Returns the directory. `packed`: the model already
    packed with `configs` (a block-streamed model is packed as its blocks are read)."""
    packed = packed if packed is not None else apply_allocation(model, configs, quantized)
    modules = dict(packed.named_modules())
    layers = {name: _layer_record(modules[name], cfg, sorted(shared_users(model, name)))
              for name, cfg in configs.items()}
    sixteen = {f"{n}.weight" for n, cfg in configs.items() if not cfg.quantized}
    sixteen |= {f"{user}.weight" for n, r in layers.items() if not configs[n].quantized
                for user in r.get("shared_by", ())}
    unique, aliases = _dedupe(dict(packed.state_dict()))  # a shared weight is stored once
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in unique.items():
        if key in sixteen or any(aliases[a] == key for a in aliases if a in sixteen):
            tensor = tensor.to(sixteen_bit_dtype(tensor.dtype))
        tensors[key] = tensor.detach().to("cpu").contiguous()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "packing": PACKING,
        "layers": json.dumps(layers),
        "allocation": json.dumps(allocation_json),
        "aliases": json.dumps(aliases),
        **_hf_metadata(model),
    }
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS_FILE), metadata=metadata)
    (out / ALLOCATION_FILE).write_text(json.dumps(allocation_json, indent=2) + "\n")
    return out


def read_metadata(directory: str | os.PathLike) -> dict[str, object]:
    """The artifact's metadata with its JSON entries decoded; ValueError if it is not one."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"no {WEIGHTS_FILE} in {directory}")
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    if raw.get("format") != FORMAT:
        raise ValueError(f"{path} is not a bitalloc packed artifact (format={raw.get('format')!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {raw.get('format_version')!r}; this "
                         f"version reads {FORMAT_VERSION}")
    meta: dict[str, object] = dict(raw)
    for key in ("layers", "allocation", "aliases"):
        meta[key] = json.loads(raw[key])
    return meta


def load_artifact(directory: str | os.PathLike,
                  build_model: Callable[[], nn.Module] | None = None) -> nn.Module:
    """Rebuild the packed model of an artifact, in eval mode, on the CPU.

    `build_model()` returns the bare architecture (its weights are all overwritten), e.g.
    `DigitsCNN()` or `AutoModel.from_config(config)`. Without it, a Hugging Face model is
    rebuilt from the config stored in the metadata; anything else raises ValueError."""
    meta = read_metadata(directory)
    model = build_model() if build_model is not None else _build_hf_model(meta)
    if not isinstance(model, nn.Module):
        raise ValueError(f"build_model returned {type(model).__name__}, not an nn.Module")
    for name, record in meta["layers"].items():
        _swap_in(model, name, record)
    tensors = load_file(str(Path(directory) / WEIGHTS_FILE))
    for key, source in meta["aliases"].items():
        tensors[key] = tensors[source]
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"the artifact does not fit the model built: {exc}") from None
    # layers at a_bits < 16: their input quantizers, as the evaluation ran them; packed
    # linear layers at w, a <= 8 bits compute in integers (kernels.int8), the rest get hooks
    records = meta["allocation"].get("activations", {})
    attach_input_quantizers(model, {n: ActivationQuantizer.from_record(r)
                                    for n, r in records.items()})
    return model.eval()


# --- internals -----------------------------------------------------------------


def _layer_record(module: nn.Module, config: QuantConfig, shared_by: list[str]) -> dict:
    if isinstance(module, PACKED_TYPES):
        kind, shape = module.kind, list(module.weight_shape)
    else:
        kind, shape = layer_kind(module), list(logical_shape(module))
    record = {"kind": kind, "shape": shape, "bits": config.bits, "group_size": config.group_size,
              "symmetric": config.symmetric, "mse_clip": config.mse_clip}
    if shared_by:
        record["shared_by"] = shared_by
    return record


def _swap_in(model: nn.Module, name: str, record: dict) -> None:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"the model built has no layer {name!r}") from None
    kind = layer_kind(module)
    if kind != record["kind"] or list(logical_shape(module)) != record["shape"]:
        raise ValueError(f"layer {name}: the artifact holds a {record['kind']} "
                         f"{record['shape']}, the model built a {kind} "
                         f"{list(logical_shape(module))}")
    config = QuantConfig(record["bits"], record["group_size"], record["symmetric"],
                         record["mse_clip"])
    if not config.quantized:
        return
    owner = empty_packed_module(module, config)
    model.set_submodule(name, owner)
    for user in record.get("shared_by", ()):
        try:
            target = model.get_submodule(user)
        except AttributeError:
            raise ValueError(f"the model built has no layer {user!r} (it shares {name}'s "
                             "weight in the artifact)") from None
        model.set_submodule(user, sharing_module(target, owner))


def _dedupe(tensors: dict[str, torch.Tensor]):
    """Store tensors that share memory once; return (tensors, {dropped key: kept key})."""
    kept: dict[tuple, str] = {}
    unique, aliases = {}, {}
    for key, t in tensors.items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and ident in kept:
            aliases[key] = kept[ident]
            continue
        kept[ident] = key
        unique[key] = t
    return unique, aliases


def _hf_metadata(model: nn.Module) -> dict[str, str]:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_json_string"):
        return {}
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return {"hf_class": type(model).__name__, "hf_config": config.to_json_string(),
            "float_dtype": str(dtype).removeprefix("torch.")}


def _build_hf_model(meta: Mapping[str, object]) -> nn.Module:
    if "hf_config" not in meta:
        raise ValueError("this artifact holds no Hugging Face config; pass build_model, a "
                         "callable returning the bare architecture")
    import transformers

    config_dict = json.loads(meta["hf_config"])
    config = transformers.AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    cls = getattr(transformers, str(meta["hf_class"]), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(f"{meta['hf_class']!r} is not a transformers model class")
    dtype = getattr(torch, str(meta.get("float_dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"bad float_dtype {meta.get('float_dtype')!r} in the artifact")
    return cls(config).to(dtype)
