"""Quantized modules holding packed weights (`kernels.packed_weight`) as buffers.

* `QuantLinear`: y = x @ dequant(Wq)^T + b through the `bitalloc::wq_linear` op (Triton on
  CUDA, the torch path elsewhere). `QuantConv1DT` is the same for transformers' `Conv1D`
  (weight stored (in, out), packed from its (out, in) quantizer view). Given an input
  quantizer (`QuantLinear.quantize_inputs`) with both widths at most 8 bits, it computes in
  integers instead (`kernels.int8`: int8 × int8 → int32, then the rescale).
* `QuantConv`: a Conv1d/Conv2d whose weight (out, in/groups, *kernel) is packed as
  (out, in/groups * prod(kernel)); dequantized per call into F.conv1d / F.conv2d.
* `QuantEmbedding`: dequantizes only the looked-up rows.

Buffers: `qweight`, `scales`, `zeros` (+ `bias` where the layer has one, in its original
dtype). Each module can be built empty (to load an artifact into) or from a float layer.
A linear layer that shares its weight with a packed embedding (a tied LM head) is a
`QuantLinear` holding the embedding's very buffers (`QuantLinear.sharing`): the two
layouts are the same, (V, d) grouped along d.
No policy here: which layer gets which width is `kernels.apply`'s business.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels.activation import ActivationQuantizer
from kernels.int8 import IntWeight, int8_linear, supports_integer_path
from kernels.ops import linear_2d
from kernels.packed_weight import PackedWeight, pack_weight
from kernels.packing import packed_rows
from kernels.quantizer import QuantizedWeight
from kernels.scheme import QuantConfig, num_groups


def packed_from(view: torch.Tensor, config: QuantConfig,
                quantized: QuantizedWeight | None = None) -> PackedWeight:
    """The packed weight of `view` (the weight as the quantizer sees it): `quantized`,
    codes an algorithm already chose (GPTQ, AdaQuant), packed as they are; without
    it, `view` rounded to nearest."""
    if quantized is None:
        return pack_weight(view, config)
    if quantized.config != config or tuple(quantized.shape) != tuple(view.shape):
        raise ValueError(f"quantized codes {quantized.shape} {quantized.config} do not fit a "
                         f"{tuple(view.shape)} weight at {config}")
    return PackedWeight.from_quantized(quantized)


class _Packed(nn.Module):
    """Holds one packed weight of `shape` quantized with `config`."""

    def __init__(self, shape: tuple[int, ...], config: QuantConfig,
                 device: torch.device | str | None = None):
        super().__init__()
        if not config.quantized:
            raise ValueError("16-bit layers are not packed; keep the float layer")
        self.weight_shape = tuple(shape)
        self.config = config
        n, k = shape[0], math.prod(shape[1:])
        groups = num_groups(k, config)
        zero_cols = 0 if config.symmetric else packed_rows(n, config.bits)
        self.register_buffer("qweight", torch.zeros(packed_rows(k, config.bits), n,
                                                    dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.ones(groups, n, dtype=torch.float16, device=device))
        self.register_buffer("zeros", torch.zeros(groups, zero_cols, dtype=torch.int32,
                                                  device=device))

    @property
    def packed(self) -> PackedWeight:
        return PackedWeight(self.qweight, self.scales, self.zeros, self.weight_shape, self.config)

    def _load_packed(self, weight: PackedWeight) -> None:
        if weight.shape != self.weight_shape or weight.config != self.config:
            raise ValueError(f"packed weight {weight.shape} {weight.config} does not fit "
                             f"{self.weight_shape} {self.config}")
        self.qweight.copy_(weight.qweight)
        self.scales.copy_(weight.scales)
        self.zeros.copy_(weight.zeros)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight in its original shape, dequantized to `dtype`."""
        return self.packed.dequantize(dtype)


class QuantLinear(_Packed):
    """Linear layer with a packed weight; input (..., in_features) -> (..., out_features)."""

    kind = "linear"

    def __init__(self, in_features: int, out_features: int, bias: bool, config: QuantConfig,
                 bias_dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        super().__init__((out_features, in_features), config, device)
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device)
                             if bias else None)
        self.input_quantizer: ActivationQuantizer | None = None
        self._int_weight: tuple[tuple, IntWeight] | None = None

    def quantize_inputs(self, quantizer: ActivationQuantizer | None) -> None:
        """Quantize this layer's input with `quantizer` (None: leave it in float). With both
        widths at most 8 bits (W8A8, W4A8, ...) the layer then computes in integers
        (`kernels.int8`); otherwise its input is fake-quantized before the weight-only path."""
        if quantizer is not None and quantizer.dim != -1:
            raise ValueError("a linear layer's input is quantized along its last dimension")
        self.input_quantizer = quantizer

    @property
    def integer_path(self) -> bool:
        """Whether forward computes in integers (int8 × int8 → int32)."""
        return supports_integer_path(self.config.bits, self.input_quantizer)

    def int_weight(self) -> IntWeight:
        """The weight as int8 operands, unpacked once and kept until the buffers change."""
        key = tuple((t.data_ptr(), t._version, t.device) for t in (self.qweight, self.scales,
                                                                   self.zeros))
        if self._int_weight is None or self._int_weight[0] != key:
            self._int_weight = (key, IntWeight.from_packed(self.packed))
        return self._int_weight[1]

    @classmethod
    def empty_like(cls, linear: nn.Linear, config: QuantConfig) -> QuantLinear:
        return cls(linear.in_features, linear.out_features, linear.bias is not None, config,
                   linear.weight.dtype, linear.weight.device)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, config: QuantConfig,
                    quantized: QuantizedWeight | None = None) -> QuantLinear:
        module = cls.empty_like(linear, config)
        module._load_packed(packed_from(linear.weight, config, quantized))
        if linear.bias is not None:
            module.bias.copy_(linear.bias)
        return module

    @classmethod
    def sharing(cls, owner: _Packed, bias: torch.Tensor | None = None) -> QuantLinear:
        """A linear layer y = x Wᵀ (+ bias) on the packed weight of `owner` (an embedding
        table (V, d) used as the output projection d -> V), its buffers shared, not copied."""
        if len(owner.weight_shape) != 2:
            raise ValueError(f"only a 2-D packed weight can serve as a linear layer, got "
                             f"{owner.weight_shape}")
        out_features, in_features = owner.weight_shape
        module = cls(in_features, out_features, bias is not None, owner.config,
                     torch.float32 if bias is None else bias.dtype, owner.qweight.device)
        for key in ("qweight", "scales", "zeros"):
            setattr(module, key, getattr(owner, key))
        if bias is not None:
            module.bias.copy_(bias.detach())
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x has {x.shape[-1]} features, expected {self.in_features}")
        quantizer = self.input_quantizer
        if quantizer is not None and self.integer_path:
            y = int8_linear(x.reshape(-1, self.in_features), quantizer, self.int_weight(),
                            self.bias)
            return y.reshape(*x.shape[:-1], self.out_features)
        if quantizer is not None:
            x = quantizer.fake_quantize(x)
        y = linear_2d(x.reshape(-1, self.in_features), self.qweight, self.scales, self.zeros,
                      self.bias, self.config.bits, self.config.group_size_for(self.in_features),
                      self.in_features, self.config.symmetric)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        a = "" if self.input_quantizer is None else f", a_bits={self.input_quantizer.bits}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, bits={self.config.bits}, "
                f"group_size={self.config.group_size}{a}")


class QuantConv1DT(QuantLinear):
    """transformers' `Conv1D` (y = x @ W + b, W stored (in, out)) with its weight packed
    from the (out, in) quantizer view: computes exactly what `QuantLinear` computes."""

    kind = "hf_conv1d"

    @classmethod
    def empty_like(cls, conv: nn.Module, config: QuantConfig) -> QuantConv1DT:
        nx, nf = conv.weight.shape
        return cls(nx, nf, conv.bias is not None, config, conv.weight.dtype, conv.weight.device)

    @classmethod
    @torch.no_grad()
    def from_conv1d(cls, conv: nn.Module, config: QuantConfig,
                    quantized: QuantizedWeight | None = None) -> QuantConv1DT:
        module = cls.empty_like(conv, config)
        module._load_packed(packed_from(conv.weight.T, config, quantized))
        if conv.bias is not None:
            module.bias.copy_(conv.bias)
        return module


class QuantConv(_Packed):
    """Conv1d or Conv2d with a packed weight, dequantized per call."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d, config: QuantConfig):
        if type(conv) not in (nn.Conv1d, nn.Conv2d):
            raise ValueError(f"QuantConv takes nn.Conv1d or nn.Conv2d, got {type(conv).__name__}")
        super().__init__(tuple(conv.weight.shape), config, conv.weight.device)
        self.dims = 1 if isinstance(conv, nn.Conv1d) else 2
        self.kind = f"conv{self.dims}d"
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.groups, self.padding_mode = conv.groups, conv.padding_mode
        self.reversed_padding = conv._reversed_padding_repeated_twice
        self.register_buffer("bias", None if conv.bias is None else torch.zeros_like(conv.bias))

    @classmethod
    def empty_like(cls, conv: nn.Conv1d | nn.Conv2d, config: QuantConfig) -> QuantConv:
        return cls(conv, config)

    @classmethod
    @torch.no_grad()
    def from_conv(cls, conv: nn.Conv1d | nn.Conv2d, config: QuantConfig,
                  quantized: QuantizedWeight | None = None) -> QuantConv:
        module = cls(conv, config)
        module._load_packed(packed_from(conv.weight, config, quantized))
        if conv.bias is not None:
            module.bias.copy_(conv.bias)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dequantized_weight(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        conv = F.conv1d if self.dims == 1 else F.conv2d
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self.reversed_padding, mode=self.padding_mode)
            padding = 0
        return conv(x, weight, bias, self.stride, padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"conv{self.dims}d, weight={self.weight_shape}, stride={self.stride}, "
                f"padding={self.padding}, bits={self.config.bits}, "
                f"group_size={self.config.group_size}")


class QuantEmbedding(_Packed):
    """Embedding with a packed (num_embeddings, embedding_dim) table; ids (...) ->
    (..., embedding_dim) in `dtype` (the float table's dtype; follows `.to(dtype)`)."""

    kind = "embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, config: QuantConfig,
                 dtype: torch.dtype = torch.float32, padding_idx: int | None = None,
                 device: torch.device | str | None = None):
        super().__init__((num_embeddings, embedding_dim), config, device)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        # empty, not saved: carries the output dtype through module.to(dtype) / .half()
        self.register_buffer("dtype_anchor", torch.empty(0, dtype=dtype, device=device),
                             persistent=False)

    @classmethod
    def empty_like(cls, embedding: nn.Embedding, config: QuantConfig) -> QuantEmbedding:
        if embedding.max_norm is not None:
            raise ValueError("embeddings with max_norm renormalise their table on lookup; "
                             "they cannot be packed")
        return cls(embedding.num_embeddings, embedding.embedding_dim, config,
                   embedding.weight.dtype, embedding.padding_idx, embedding.weight.device)

    @classmethod
    @torch.no_grad()
    def from_embedding(cls, embedding: nn.Embedding, config: QuantConfig,
                       quantized: QuantizedWeight | None = None) -> QuantEmbedding:
        module = cls.empty_like(embedding, config)
        module._load_packed(packed_from(embedding.weight, config, quantized))
        return module

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"embedding ids must be int32 or int64, got {ids.dtype}")
        flat = ids.reshape(-1)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise ValueError(f"embedding ids must lie in [0, {self.num_embeddings})")
        unique, inverse = torch.unique(flat, return_inverse=True)
        rows = self.packed.select_rows(unique).dequantize(self.dtype_anchor.dtype)
        return rows[inverse].reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, bits={self.config.bits}, "
                f"group_size={self.config.group_size}")
