"""Apply an allocation: the one entry point that turns a float model into a packed one.

`apply_allocation(model, {name: QuantConfig})` returns a copy in which every named
Linear / Conv1D (transformers) / Conv1d / Conv2d / Embedding with bits < 16 is replaced
by its packed module (`kernels.modules`) at its own width. Entries with bits = 16 keep
the float layer with its weight rounded to 16-bit values, exactly as
`kernels.fake_quant.fake_quantize_model` does and as the artifact (`kernels.artifact`)
stores it: the size accounting counts those layers at 16 bits. The packed model
computes the fake-quantized model's function.

A weight shared with other modules (an embedding tied to the LM head) is allocated
once, under the embedding's name: its users become packed linear layers on the same
buffers (`QuantLinear.sharing`), so it is stored once and both computations see the
same quantized values.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from kernels.activation import ActivationQuantizer, attach
from kernels.fake_quant import fake_quantize_weight
from kernels.layout import is_transposed_linear, shared_users
from kernels.modules import QuantConv, QuantConv1DT, QuantEmbedding, QuantLinear
from kernels.quantizer import QuantizedWeight
from kernels.scheme import QuantConfig

LAYER_KINDS: dict[type, str] = {nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d",
                                nn.Embedding: "embedding"}
HF_CONV1D = "hf_conv1d"  # transformers' Conv1D: a linear layer storing its weight (in, out)
PACKED_TYPES = (QuantLinear, QuantConv, QuantEmbedding)


def layer_kind(module: nn.Module) -> str:
    """'linear' | 'hf_conv1d' | 'conv1d' | 'conv2d' | 'embedding'; ValueError otherwise."""
    if is_transposed_linear(module):
        return HF_CONV1D
    kind = LAYER_KINDS.get(type(module))
    if kind is None:
        raise ValueError(f"{type(module).__name__} is not quantizable; quantizable layers are "
                         "Linear, transformers' Conv1D, Conv1d, Conv2d and Embedding")
    return kind


def pack_module(module: nn.Module, config: QuantConfig,
                quantized: QuantizedWeight | None = None) -> nn.Module:
    """The packed module of a float layer: its weight rounded to nearest and packed, or
    `quantized` (codes GPTQ / AdaQuant chose for it) packed as they are."""
    kind = layer_kind(module)
    if kind == "linear":
        return QuantLinear.from_linear(module, config, quantized)
    if kind == HF_CONV1D:
        return QuantConv1DT.from_conv1d(module, config, quantized)
    if kind == "embedding":
        return QuantEmbedding.from_embedding(module, config, quantized)
    return QuantConv.from_conv(module, config, quantized)


def empty_packed_module(module: nn.Module, config: QuantConfig) -> nn.Module:
    """A packed module shaped like `module`, with empty buffers to load an artifact into."""
    kind = layer_kind(module)
    if kind == "linear":
        return QuantLinear.empty_like(module, config)
    if kind == HF_CONV1D:
        return QuantConv1DT.empty_like(module, config)
    if kind == "embedding":
        return QuantEmbedding.empty_like(module, config)
    return QuantConv.empty_like(module, config)


def sharing_module(user: nn.Module, owner: nn.Module) -> nn.Module:
    """The packed form of `user`, a linear layer holding the weight of the packed `owner`."""
    if type(user) is not nn.Linear or tuple(user.weight.shape) != tuple(owner.weight_shape):
        raise ValueError(f"a {type(user).__name__} sharing a packed {owner.kind}'s weight "
                         "cannot be packed; only a linear layer of the same shape (a tied LM "
                         "head) can")
    return QuantLinear.sharing(owner, user.bias)


def attach_input_quantizers(model: nn.Module,
                            quantizers: Mapping[str, ActivationQuantizer]) -> list:
    """Quantize the named layers' inputs: a packed linear layer takes its quantizer itself
    (and computes in integers when both widths are at most 8 bits, `kernels.int8`); any
    other layer gets the fake-quantizing pre-hook (`kernels.activation.attach`). Returns the
    hook handles."""
    modules = dict(model.named_modules())
    unknown = sorted(set(quantizers) - set(modules))
    if unknown:
        raise ValueError(f"no such layers in the model: {', '.join(unknown)}")
    hooked = {}
    for name, q in quantizers.items():
        if isinstance(modules[name], QuantLinear):
            modules[name].quantize_inputs(q)
        else:
            hooked[name] = q
    return attach(model, hooked)


@torch.no_grad()
def apply_allocation(model: nn.Module, configs: Mapping[str, QuantConfig],
                     quantized: Mapping[str, QuantizedWeight] | None = None,
                     activations: Mapping[str, ActivationQuantizer] | None = None,
                     inplace: bool = False) -> nn.Module:
    """A copy of `model` with each layer named in `configs` packed at its config's width:
    the codes in `quantized` where it has the layer (the job's quantizer chose them),
    otherwise rounded to nearest; `activations`: input quantizers of layers at a_bits < 16
    (`attach_input_quantizers`: packed linear layers compute in integers).

    `inplace`: pack `model` itself, no copy (for a caller that made its own).
    Layers already packed with the same config are kept (applying twice is harmless);
    raises ValueError for unknown names, non-quantizable modules, a packed layer
    whose config differs, or two entries for one shared weight."""
    modules = dict(model.named_modules())
    users: dict[str, dict[str, nn.Module]] = {}
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
        users[name] = shared_users(model, name)
        twice = sorted(set(users[name]) & set(configs))
        if twice:
            raise ValueError(f"{name} shares its weight with {', '.join(twice)}: a shared weight "
                             "is one layer, allocate it once")
    packed = model if inplace else copy.deepcopy(model)
    for name, config in configs.items():
        module = packed.get_submodule(name)
        if isinstance(module, PACKED_TYPES):
            continue
        if config.quantized:
            owner = pack_module(module, config, (quantized or {}).get(name))
            packed.set_submodule(name, owner)
            for user in users[name]:
                packed.set_submodule(user, sharing_module(packed.get_submodule(user), owner))
        else:  # left in 16-bit: the values its 16-bit storage holds (shared users see them too)
            module.weight.data = fake_quantize_weight(module, config)
    if activations:
        attach_input_quantizers(packed, activations)
    return packed
