"""What the digits architectures share: their declaration, training once with a
fixed seed, and caching the trained weights. The bundle is the `digits` family's
(sensitivity.models.digits)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save
from torch import nn

from sensitivity.data.digits import DigitsSplit
from sensitivity.losses import task_loss
from sensitivity.paths import atomic_write_bytes, cache_dir

TRAIN_BATCH = 64


@dataclass(frozen=True)
class DigitsArchitecture:
    """A digits classifier: how to build it and train it, and which layers share bits."""

    name: str
    version: int  # bump when the architecture or training recipe changes (cache file name)
    build: Callable[[], nn.Module]
    train: Callable[[DigitsSplit], nn.Module]
    description: str
    tied_groups: Sequence[Sequence[str]] = ()

    def trained(self, data: DigitsSplit) -> nn.Module:
        return cached_model(self.name, self.version, self.build, self.train, data)


def cached_model(name: str, version: int, build: Callable[[], nn.Module],
                 train: Callable[[DigitsSplit], nn.Module], data: DigitsSplit) -> nn.Module:
    """The trained model from the cache, training and caching it on first use."""
    path = cache_dir("models") / f"{name}-v{version}.safetensors"
    if path.exists():
        model = build()
        model.load_state_dict(load_file(path))
        return model.eval()
    model = train(data).eval()
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    return model


def train_epochs(model: nn.Module, data: DigitsSplit, opt: torch.optim.Optimizer, sched,
                 epochs: int, seed: int, *, schedule_per_batch: bool) -> nn.Module:
    """Task-loss training on mini-batches in a seeded order; the learning-rate
    schedule steps after every batch or after every epoch."""
    gen = torch.Generator().manual_seed(seed)
    n = data.x_train.shape[0]
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(TRAIN_BATCH):
            opt.zero_grad()
            task_loss(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
            if schedule_per_batch:
                sched.step()
        if not schedule_per_batch:
            sched.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean()) * 100
