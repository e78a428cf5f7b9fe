"""What the digits models share: training once with a fixed seed and caching the
weights, and the bundle (calibration batch, task loss, accuracy on the test split)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from safetensors.torch import load_file, save
from torch import nn

from sensitivity.bundle import Batch, ModelBundle
from sensitivity.data.digits import DigitsSplit, load_digits_split
from sensitivity.losses import task_loss
from sensitivity.models.weights import load_strict
from sensitivity.output_loss import CrossEntropyOutput, DistillationKLOutput
from sensitivity.paths import atomic_write_bytes, cache_dir

CALIBRATION_SAMPLES = 256
TRAIN_BATCH = 64


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


def digits_bundle(name: str, version: int, build: Callable[[], nn.Module],
                  train: Callable[[DigitsSplit], nn.Module], description: str,
                  tied_groups: Sequence[Sequence[str]] = (), *,
                  weights: dict[str, torch.Tensor] | None = None,
                  calibration: Sequence[Batch] | None = None,
                  info: dict[str, float | str] | None = None) -> ModelBundle:
    """A digits classifier as a bundle: task loss on a calibration slice of the
    training split, accuracy and loss on the test split.

    With `weights` the architecture gets those (loaded strictly) instead of the
    trained cached ones; with `calibration` (batches of images `x` (n, 1, 8, 8),
    with labels `y` or without) those batches calibrate instead: with labels the
    task loss, without a self-distillation KL against the model's own logits."""
    data = load_digits_split()
    if weights is None:
        model = cached_model(name, version, build, train, data)
    else:
        model = load_strict(build(), weights, name)
    if calibration is None:
        calibration = [{"x": data.x_train[:CALIBRATION_SAMPLES],
                        "y": data.y_train[:CALIBRATION_SAMPLES]}]
    if all("y" in b for b in calibration):
        output_loss = CrossEntropyOutput(label_key="y")
    else:
        with torch.no_grad():
            calibration = [{"x": b["x"], "target": model(b["x"])} for b in calibration]
        output_loss = DistillationKLOutput(target_key="target")

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            logits = m(data.x_test)
        return {
            "accuracy": float((logits.argmax(-1) == data.y_test).float().mean()) * 100,
            "test_loss": float(task_loss(logits, data.y_test)),
        }

    def output(m: nn.Module, b) -> torch.Tensor:
        return m(b["x"])

    return ModelBundle(
        name=name,
        model=model,
        calibration=list(calibration),
        forward=output,
        loss=lambda m, b: output_loss(output(m, b), b),
        output=output,
        output_loss=output_loss,
        inputs=lambda b: (b["x"],),
        evaluate=evaluate,
        quality_metric="accuracy",
        description=description,
        tied_groups=tied_groups,
        info={"test_accuracy": accuracy(model, data.x_test, data.y_test), **(info or {})},
    )
