"""Layer discovery (DESIGN §3): which weights are quantizable, their size and
MACs per sample, which must share bits, and which never reach the loss."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from sensitivity.bundle import ModelBundle

QUANTIZABLE = {nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Embedding: "embedding"}


@dataclass(frozen=True)
class LayerInfo:
    name: str  # module name; the weight is `<name>.weight`
    kind: str  # linear | conv1d | conv2d | embedding
    shape: tuple[int, ...]
    params: int
    macs: int  # multiply-accumulates per sample, measured on a calibration batch
    group: str | None  # layers with the same group must take the same bits
    used: bool  # False: no gradient path to the loss (reported, left unquantized)


def quantizable_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if type(m) in QUANTIZABLE}


def discover_layers(bundle: ModelBundle) -> list[LayerInfo]:
    """Every quantizable layer of the bundle's model, in module order."""
    modules = quantizable_modules(bundle.model)
    batch = bundle.calibration[0]
    macs = _measure_macs(bundle, modules, batch)
    used = _reaches_loss(bundle, modules, batch)
    groups = _tied_groups(bundle, modules)
    return [
        LayerInfo(
            name=name,
            kind=QUANTIZABLE[type(m)],
            shape=tuple(m.weight.shape),
            params=m.weight.numel(),
            macs=macs.get(name, 0),
            group=groups.get(name),
            used=used[name],
        )
        for name, m in modules.items()
    ]


def _measure_macs(bundle: ModelBundle, modules: dict[str, nn.Module], batch) -> dict[str, int]:
    counts: dict[str, int] = {}

    def hook(name):
        def count(module, inputs, output):
            if isinstance(module, nn.Linear):
                rows = output.numel() // module.out_features
                counts[name] = counts.get(name, 0) + rows * module.in_features * module.out_features
            elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
                per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
                counts[name] = counts.get(name, 0) + output.numel() * per_output
            # embeddings are lookups: no multiply-accumulates
        return count

    handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
    try:
        with torch.no_grad():
            bundle.forward(bundle.model, batch)
    finally:
        for h in handles:
            h.remove()
    n = bundle.batch_size(batch)
    return {name: round(c / n) for name, c in counts.items()}


def _reaches_loss(bundle: ModelBundle, modules: dict[str, nn.Module], batch) -> dict[str, bool]:
    weights = [m.weight for m in modules.values()]
    loss = bundle.loss(bundle.model, batch)
    grads = torch.autograd.grad(loss, weights, allow_unused=True)
    return {name: g is not None for name, g in zip(modules, grads)}


def _tied_groups(bundle: ModelBundle, modules: dict[str, nn.Module]) -> dict[str, str]:
    groups: dict[str, str] = {}
    for members in bundle.tied_groups:
        missing = [m for m in members if m not in modules]
        if missing:
            raise ValueError(f"{bundle.name}: tied layers {missing} are not quantizable layers")
        for member in members:
            groups[member] = members[0]
    return groups
