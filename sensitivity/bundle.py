"""A model ready for sensitivity analysis: the network, its calibration data, its
loss and its quality measurement, behind one small interface."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from sensitivity.metrics import Metric

Batch = dict[str, torch.Tensor]


@dataclass
class ModelBundle:
    """Everything the pipeline needs to know about one model.

    `loss(model, batch)` is the scalar the Hessian is taken of: the task loss when
    the batch has labels, otherwise a self-distillation loss against the
    full-precision model's own outputs (stored in the batch as `target`).
    `forward(model, batch)` is the model's output tensor (logits, embeddings).
    `evaluate(model)` measures quality on held-out data; `metrics` declares what it
    returns, headline first, each with its direction (`sensitivity.metrics`).

    Bundles that also give `output_loss` (a loss on the output of `forward` that
    knows its output-space Hessian, see `sensitivity.output_loss`) support the
    Gauss–Newton estimators (`fisher`, the forward-mode `hawq_v2` path) and LRP;
    `loss` must then equal `output_loss(forward(model, batch), batch)`.
    `inputs(batch)` gives the positional model inputs for attribution libraries
    that call `model(*inputs)` (captum). `tied_groups` name the layers that must
    share their bits.

    `quantizer_calibration`, when given, is the data GPTQ and AdaQuant take their
    layer inputs (XᵀX) from instead of `calibration`: input-only batches (only
    `forward` runs on them, no targets, no gradients), typically many more tokens
    than the sensitivity methods can afford (a layer's Hessian needs far more rows
    than its K columns). `quantizer_batches` is what they use; without it, the
    calibration batches themselves.

    `streamed`, when set (a `sensitivity.streaming.model.StreamedModel`), says the model
    is block streamed: `model` is its meta-device skeleton (only the resident embedding,
    norm and head hold values), `forward` streams the blocks, and the stages that need
    weights (errors, probes, measured losses, quality, the artifact) go through it.
    """

    name: str
    model: nn.Module
    calibration: Sequence[Batch]
    forward: Callable[[nn.Module, Batch], torch.Tensor]
    loss: Callable[[nn.Module, Batch], torch.Tensor]
    evaluate: Callable[[nn.Module], dict[str, float]]
    metrics: Sequence[Metric]
    description: str = ""
    tied_groups: Sequence[Sequence[str]] = field(default_factory=tuple)
    info: dict[str, float | str] = field(default_factory=dict)
    output_loss: OutputLoss | None = None
    inputs: Callable[[Batch], tuple[torch.Tensor, ...]] | None = None
    # what defines the function besides weights and calibration data (e.g. an
    # uploaded model's config.json): part of the sensitivity cache key when set
    cache_salt: str = ""
    tokenizer: Any = None  # a Hugging Face model's tokenizer, written beside exports
    quantizer_calibration: Sequence[Batch] | None = None  # None: `calibration`
    streamed: Any = None  # a StreamedModel: the weights are read one block at a time

    def __post_init__(self):
        if not self.metrics:
            raise ValueError(f"{self.name}: a bundle declares at least its headline metric")

    @property
    def quantizer_batches(self) -> Sequence[Batch]:
        """The batches GPTQ / AdaQuant collect layer inputs from."""
        return self.calibration if self.quantizer_calibration is None else self.quantizer_calibration

    @property
    def headline(self) -> Metric:
        return self.metrics[0]

    @property
    def quality_metric(self) -> str:
        return self.headline.name

    @property
    def directions(self) -> dict[str, str]:
        return {m.name: m.direction for m in self.metrics}

    def batch_size(self, batch: Batch) -> int:
        return int(next(iter(batch.values())).shape[0])

    @property
    def has_output_loss(self) -> bool:
        return self.output_loss is not None

    @property
    def zero_residual(self) -> bool:
        """True when the loss is zero-residual at these weights (self-distillation at
        the full-precision point): its Hessian is then exactly Jᵀ H_out J."""
        return self.has_output_loss and bool(self.output_loss.zero_residual)

    def require_output_loss(self, method: str) -> None:
        if not self.has_output_loss:
            raise ValueError(f"{method} needs a bundle with an `output_loss`; "
                             f"{self.name} gives only a scalar loss")


class OutputLoss(Protocol):
    """A loss on model outputs with its output-space Hessian (sensitivity.output_loss)."""

    zero_residual: bool

    def __call__(self, output: torch.Tensor, batch: Batch) -> torch.Tensor: ...

    def probes(self, output: torch.Tensor, batch: Batch, k: int, gen: torch.Generator) -> torch.Tensor: ...

    def quadratic(self, output: torch.Tensor, batch: Batch, jv: torch.Tensor) -> torch.Tensor: ...

    def relevance(self, output: torch.Tensor, batch: Batch) -> torch.Tensor: ...
