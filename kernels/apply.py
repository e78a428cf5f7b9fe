"""Apply an allocation: the one entry point that turns a float model into a packed one.

`apply_allocation(model, {name: QuantConfig})` returns a copy in which every named
Linear / Conv1d / Conv2d / Embedding with bits < 16 is replaced by its packed module
(`kernels.modules`) at its own width. Entries with bits = 16 keep the float layer with
its weight rounded to 16-bit values, exactly as `kernels.fake_quant.fake_quantize_model`
does and as the artifact (`kernels.artifact`) stores it: the size accounting counts
those layers at 16 bits. The packed model computes the fake-quantized model's function.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from kernels.modules import QuantConv, QuantEmbedding, QuantLinear
from kernels.quantizer import fake_quantize
from kernels.scheme import QuantConfig

LAYER_KINDS: dict[type, str] = {nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d",
                                nn.Embedding: "embedding"}
PACKED_TYPES = (QuantLinear, QuantConv, QuantEmbedding)


def layer_kind(module: nn.Module) -> str:
    """'linear' | 'conv1d' | 'conv2d' | 'embedding'; ValueError for anything else."""
    kind = LAYER_KINDS.get(type(module))
    if kind is None:
        raise ValueError(f"{type(module).__name__} is not quantizable; quantizable layers are "
                         "Linear, Conv1d, Conv2d and Embedding")
    return kind


def pack_module(module: nn.Module, config: QuantConfig) -> nn.Module:
    """The packed module of a float layer (weights quantized and packed)."""
    kind = layer_kind(module)
    if kind == "linear":
        return QuantLinear.from_linear(module, config)
    if kind == "embedding":
        return QuantEmbedding.from_embedding(module, config)
    return QuantConv.from_conv(module, config)


def empty_packed_module(module: nn.Module, config: QuantConfig) -> nn.Module:
    """A packed module shaped like `module`, with empty buffers to load an artifact into."""
    kind = layer_kind(module)
    if kind == "linear":
        return QuantLinear.empty_like(module, config)
    if kind == "embedding":
        return QuantEmbedding.empty_like(module, config)
    return QuantConv.empty_like(module, config)


@torch.no_grad()
def apply_allocation(model: nn.Module, configs: Mapping[str, QuantConfig]) -> nn.Module:
    """A copy of `model` with each layer named in `configs` packed at its config's width.

    Layers already packed with the same config are kept (applying twice is harmless);
    raises ValueError for unknown names, non-quantizable modules, or a packed layer
    whose config differs."""
    modules = dict(model.named_modules())
    for name, config in configs.items():
        if not isinstance(config, QuantConfig):
            raise ValueError(f"{name}: expected a QuantConfig, got {type(config).__name__}")
        if name not in modules or name == "":
            raise ValueError(f"no such layer in the model: {name!r}")
        module = modules[name]
        if isinstance(module, PACKED_TYPES):
            if module.config != config:
                raise ValueError(f"{name} is already packed with {module.config}, not {config}")
            continue
        try:
            layer_kind(module)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    packed = copy.deepcopy(model)
    for name, config in configs.items():
        module = packed.get_submodule(name)
        if config.quantized and not isinstance(module, PACKED_TYPES):
            packed.set_submodule(name, pack_module(module, config))
        elif not config.quantized:  # left in 16-bit: the values its 16-bit storage holds
            module.weight.data = fake_quantize(module.weight.data, config)
    return packed
