"""The latency table of a built-in model: every quantizable layer timed at every
candidate width with our kernels on a device ({layer: {"w4a16": ms}}), in the
form the `latency_ms` budget reads."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kernels.latency import measure_latency_table
from sensitivity.layers import discover_layers, quantizable_modules
from sensitivity.models import load_model


def model_latency_table(model_name: str, widths: Sequence[int], *, rows: int = 1,
                        device: str | None = None, group_size: int = 128) -> dict[str, dict[str, float]]:
    """Time each used layer of `model_name` at each width on `device` (CUDA when present)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    bundle = load_model(model_name)
    used = {layer.name for layer in discover_layers(bundle) if layer.used}
    modules = {name: m for name, m in quantizable_modules(bundle.model).items() if name in used}
    shapes = _input_shapes(bundle, modules)
    return measure_latency_table(bundle.model, list(modules.items()), widths, rows, device,
                                 group_size=group_size, input_shapes=shapes)


def _input_shapes(bundle, modules) -> dict[str, tuple[int, ...]]:
    """Each layer's input without the batch dimension, seen on a calibration batch."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name):
        def hook(module, inputs, output):
            shapes.setdefault(name, tuple(inputs[0].shape[1:]))  # returns None: output unchanged
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in modules.items()]
    try:
        with torch.no_grad():
            bundle.forward(bundle.model, bundle.calibration[0])
    finally:
        for h in hooks:
            h.remove()
    return shapes
