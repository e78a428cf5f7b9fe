"""How a layer's weight is laid out for the quantizer, and which layers share one.

The quantizer, the packer and the size accounting see every weight as a matrix
(rows = outputs, K = inputs), grouped along K. `nn.Linear`, convolutions and
embeddings store it that way already; transformers' `Conv1D` (GPT-2) stores its
weight transposed, (in, out), and computes x @ W + b. Its quantizer view is W.T,
so it is quantized along its inputs like any linear layer, and a packed Conv1D is
a packed linear layer.

A weight can also be shared: tied input and output embeddings are one Parameter
held by the embedding and the LM head. It is one unit (quantized once, its bytes
counted once); `shared_users` finds the other modules that hold it.

No transformers import here (kernels depend on torch only): Conv1D is recognised
by its class name and its `nf` / `nx` attributes.
"""

from __future__ import annotations

import torch
from torch import nn


def is_transposed_linear(module: nn.Module) -> bool:
    """transformers' `Conv1D`: a linear layer whose weight is stored (in, out)."""
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor)
            and weight.dim() == 2 and tuple(weight.shape) == (getattr(module, "nx", None),
                                                              getattr(module, "nf", None)))


def is_linear_like(module: nn.Module) -> bool:
    """`nn.Linear` or transformers' `Conv1D`: y = x Wᵀ + b over the last dimension."""
    return isinstance(module, nn.Linear) or is_transposed_linear(module)


def quantizer_view(module: nn.Module, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The weight as the quantizer sees it, (out, in...), a view (no copy); `weight`
    defaults to the module's own (pass another tensor in its storage layout)."""
    w = module.weight if weight is None else weight
    return w.T if is_transposed_linear(module) else w


def from_quantizer_view(module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of `quantizer_view`: back to the module's storage layout."""
    return matrix.T if is_transposed_linear(module) else matrix


def logical_shape(module: nn.Module) -> tuple[int, ...]:
    """The weight's shape in the quantizer view: (out, in) for Conv1D."""
    return tuple(quantizer_view(module).shape)


def _stored(module: nn.Module) -> torch.Tensor | None:
    """The tensor holding a layer's weight: `weight`, or a packed layer's `qweight`."""
    for key in ("weight", "qweight"):
        t = getattr(module, key, None)
        if isinstance(t, torch.Tensor):
            return t
    return None


def shared_users(model: nn.Module, name: str) -> dict[str, nn.Module]:
    """Modules other than `name` holding the same weight as `name` (e.g. the LM head
    tied to the input embedding; once packed, the same `qweight`), by module name."""
    modules = dict(model.named_modules(remove_duplicate=False))
    weight = _stored(modules[name])
    if weight is None:
        return {}
    return {n: m for n, m in modules.items() if n != name and n and _stored(m) is weight}
