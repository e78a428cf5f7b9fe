"""A model ready for sensitivity analysis: the network, its calibration data, its
loss and its quality measurement, behind one small interface."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

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

    Bundles that also give `output(model, batch)` (the model's output tensor) and
    `output_loss` (a loss on that output that knows its output-space Hessian, see
    `sensitivity.output_loss`) support the Gauss–Newton estimators (`fisher`, the
    forward-mode `hawq_v2` path) and LRP; `loss` must then equal
    `output_loss(output(model, batch), batch)`. `inputs(batch)` gives the positional
    model inputs for attribution libraries that call `model(*inputs)` (captum).
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
    output: Callable[[nn.Module, Batch], torch.Tensor] | None = None
    output_loss: OutputLoss | None = None
    inputs: Callable[[Batch], tuple[torch.Tensor, ...]] | None = None
    # what defines the function besides weights and calibration data (e.g. an
    # uploaded model's config.json): part of the sensitivity cache key when set
    cache_salt: str = ""

    def batch_size(self, batch: Batch) -> int:
        return int(next(iter(batch.values())).shape[0])

    @property
    def has_output_loss(self) -> bool:
        return self.output is not None and self.output_loss is not None

    @property
    def zero_residual(self) -> bool:
        """True when the loss is zero-residual at these weights (self-distillation at
        the full-precision point): its Hessian is then exactly Jᵀ H_out J."""
        return self.has_output_loss and bool(self.output_loss.zero_residual)

    def require_output_loss(self, method: str) -> None:
        if not self.has_output_loss:
            raise ValueError(f"{method} needs a bundle with `output` and `output_loss`; "
                             f"{self.name} gives only a scalar loss")


class OutputLoss(Protocol):
    """A loss on model outputs with its output-space Hessian (sensitivity.output_loss)."""

    zero_residual: bool

    def __call__(self, output: torch.Tensor, batch: Batch) -> torch.Tensor: ...

    def probes(self, output: torch.Tensor, batch: Batch, k: int, gen: torch.Generator) -> torch.Tensor: ...

    def quadratic(self, output: torch.Tensor, batch: Batch, jv: torch.Tensor) -> torch.Tensor: ...

    def relevance(self, output: torch.Tensor, batch: Batch) -> torch.Tensor: ...
