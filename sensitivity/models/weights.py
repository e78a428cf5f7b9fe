"""Uploaded weights into a built architecture: read with safetensors only (never
unpickled) and loaded strictly, with a message that names every key that does
not fit."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

SHOWN = 8  # keys named per kind of mismatch


class WeightsMismatch(ValueError):
    """A state dict that does not fit the architecture."""


def read_state_dict(path: Path, label: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{label}: cannot read the safetensors weights: {exc}") from None


def load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], label: str) -> nn.Module:
    """Load `state_dict` into `model`: every key present with its shape, nothing
    extra. BatchNorm's `num_batches_tracked` counter may be absent, and keys that
    name a buffer the model keeps out of its state dict (e.g. position ids) are
    ignored. Floating-point tensors take the model's dtype."""
    expected = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}
    missing = sorted(k for k in expected if k not in state_dict
                     and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state_dict if k not in expected and k not in buffers)
    shapes = [f"{k} (got {list(state_dict[k].shape)}, expected {list(v.shape)})"
              for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                           ("shape mismatches", shapes)):
            if keys:
                more = f", … ({len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
                parts.append(f"{what} ({len(keys)}): {', '.join(keys[:SHOWN])}{more}")
        raise WeightsMismatch(f"{label}: the weights do not fit the architecture: "
                              + "; ".join(parts))
    loaded = {}
    for k, v in expected.items():
        t = state_dict.get(k, v)
        if t.is_floating_point() != v.is_floating_point():
            raise WeightsMismatch(f"{label}: {k} has dtype {t.dtype}, expected {v.dtype}")
        loaded[k] = t.to(v.dtype)
    model.load_state_dict(loaded, strict=True)
    return model.eval()
