"""A model ready for sensitivity analysis: the network, its calibration data, its
loss and its quality measurement, behind one small interface."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


@dataclass
class ModelBundle:
    """Everything the pipeline needs to know about one model.

    `loss(model, batch)` is the scalar the Hessian is taken of: the task loss when
    the batch has labels, otherwise a self-distillation loss against the
    full-precision model's own outputs (stored in the batch as `target`).
    `evaluate(model)` measures quality on held-out data; `quality_metric` names the
    headline entry of its result.
    """

    name: str
    model: nn.Module
    calibration: Sequence[Batch]
    forward: Callable[[nn.Module, Batch], torch.Tensor]
    loss: Callable[[nn.Module, Batch], torch.Tensor]
    evaluate: Callable[[nn.Module], dict[str, float]]
    quality_metric: str
    description: str = ""
    tied_groups: Sequence[Sequence[str]] = field(default_factory=tuple)
    info: dict[str, float | str] = field(default_factory=dict)

    def batch_size(self, batch: Batch) -> int:
        return int(next(iter(batch.values())).shape[0])
