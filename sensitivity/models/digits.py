"""The `digits` family: classifiers of scikit-learn's 8x8 digits (`digits-cnn`,
`digits-vit`), as shipped or with uploaded weights and calibration images.

Calibration: the first 256 training images with labels (task loss), or an
uploaded safetensors dataset — with `labels` the task loss, without a
self-distillation KL against the model's own full-precision logits. Quality:
accuracy and cross-entropy on the built-in held-out test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module

import torch
from torch import nn

from sensitivity.bundle import Batch, ModelBundle
from sensitivity.catalog import FAMILIES
from sensitivity.data.digits import load_digits_split
from sensitivity.data.uploaded import read_tensors
from sensitivity.losses import task_loss
from sensitivity.models.digits_common import DigitsArchitecture, accuracy
from sensitivity.models.family import ModelRequest
from sensitivity.models.weights import load_strict, read_state_dict
from sensitivity.output_loss import CrossEntropyOutput, DistillationKLOutput

FAMILY = FAMILIES["digits"]
CALIBRATION_SAMPLES = 256
DIGITS_BATCH = 256
MAX_DIGITS_SAMPLES = 1024


def load(request: ModelRequest) -> ModelBundle:
    arch: DigitsArchitecture = import_module(request.builtin.module).ARCHITECTURE
    data = load_digits_split()
    label = f"model {request.name!r} ({arch.name})"
    if request.source is None:
        model = arch.trained(data)
    else:
        model = load_strict(arch.build(), read_state_dict(request.source.path, label), label)
    if request.data is None:
        calibration = [{"x": data.x_train[:CALIBRATION_SAMPLES], "y": data.y_train[:CALIBRATION_SAMPLES]}]
        note = "built-in: 256 training images with labels (task loss)"
    else:
        calibration, note = digits_calibration(read_tensors(request.data), request.data.name, arch.name)
    if all("y" in b for b in calibration):
        output_loss = CrossEntropyOutput(label_key="y")
    else:
        with torch.no_grad():
            calibration = [{"x": b["x"], "target": model(b["x"])} for b in calibration]
        output_loss = DistillationKLOutput(target_key="target")
    labelled = isinstance(output_loss, CrossEntropyOutput)
    description = arch.description if not request.uploaded else (
        f"{arch.name} architecture on 8x8 digits, "
        + ("task loss (labels)" if labelled else "self-distillation KL to FP logits"))

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            logits = m(data.x_test)
        return {
            "accuracy": float((logits.argmax(-1) == data.y_test).float().mean()) * 100,
            "test_loss": float(task_loss(logits, data.y_test)),
        }

    def forward(m: nn.Module, b: Batch) -> torch.Tensor:
        return m(b["x"])

    return ModelBundle(
        name=request.name,
        model=model,
        calibration=list(calibration),
        forward=forward,
        loss=lambda m, b: output_loss(forward(m, b), b),
        output_loss=output_loss,
        inputs=lambda b: (b["x"],),
        evaluate=evaluate,
        metrics=FAMILY.metrics,
        description=description,
        tied_groups=arch.tied_groups,
        info={"test_accuracy": accuracy(model, data.x_test, data.y_test),
              "source": request.source_note(),
              "calibration": note,
              "evaluation": f"accuracy: top-1 accuracy (%) on the built-in held-out scikit-learn "
                            f"digits test split ({len(data.y_test)} images); test_loss: its "
                            "cross-entropy"},
    )


def digits_calibration(tensors: dict[str, torch.Tensor], dataset: str,
                       architecture: str) -> tuple[list[Batch], str]:
    """Batches {x (n, 1, 8, 8) float32[, y (n,) int64]} of a dataset for a digits
    model, and a note saying what was used."""
    x = tensors["inputs"]
    where = f"dataset {dataset!r} for {architecture}"
    if "attention_mask" in tensors:
        raise ValueError(f"{where}: `attention_mask` is for token inputs; {architecture} "
                         "takes images")
    if not x.is_floating_point():
        raise ValueError(f"{where}: `inputs` must be floating-point images (values in [0, 1]), "
                         f"got {x.dtype}")
    n = x.shape[0]
    if tuple(x.shape[1:]) not in ((1, 8, 8), (8, 8), (64,)):
        raise ValueError(f"{where}: `inputs` has shape {list(x.shape)}, but {architecture} "
                         "takes 8x8 grey images: (n, 1, 8, 8), (n, 8, 8) or (n, 64)")
    x = x.reshape(n, 1, 8, 8).float()
    y = tensors.get("labels")
    if y is not None:
        if y.is_floating_point() or y.dtype == torch.bool or y.dim() != 1:
            raise ValueError(f"{where}: `labels` must be integer class ids of shape ({n},), got "
                             f"{y.dtype} of shape {list(y.shape)}")
        if int(y.min()) < 0 or int(y.max()) >= 10:
            raise ValueError(f"{where}: `labels` must be class ids 0-9, got values "
                             f"{int(y.min())}..{int(y.max())}")
        y = y.long()
    used = min(n, MAX_DIGITS_SAMPLES)
    batches: Sequence[Batch] = []
    for i in range(0, used, DIGITS_BATCH):
        batch = {"x": x[i:i + DIGITS_BATCH]}
        if y is not None:
            batch["y"] = y[i:i + DIGITS_BATCH]
        batches.append(batch)
    loss = "labels: task loss" if y is not None else "no labels: self-distillation KL to FP logits"
    capped = f" (first {used} of {n})" if used < n else ""
    return list(batches), f"uploaded dataset {dataset!r}: {used} images{capped}, {loss}"
