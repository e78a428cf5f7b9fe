"""What an estimator is given: `estimate(ctx, config) -> SensitivityTable`.

The context carries the model, the layers and candidate choices, the job's
quantization scheme and its provider of quantized weights (`weights`: Q_b(W_l)
under the job's quantizer, `sensitivity.quantized`), the calibration batches with
their weights in the loss, a progress reporter already scoped to the "sensitivity"
stage, the checkpoint the engine opened for the table (`sensitivity.checkpoint`), and
the executor of Hutchinson's probe shards (`sensitivity.shards`). The config is the
method's validated parameters (`sensitivity.methods`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from kernels.scheme import QuantScheme
from sensitivity.bundle import Batch, ModelBundle
from sensitivity.checkpoint import NO_CHECKPOINT, Checkpoint
from sensitivity.layers import LayerInfo
from sensitivity.methods import MethodConfig
from sensitivity.progress import Progress, no_progress
from sensitivity.quantized import QuantizedWeights
from sensitivity.shards import LocalShards, ShardExecutor
from sensitivity.table import Choice, SensitivityTable

STAGE = "sensitivity"


class StageProgress:
    """`progress(fraction, message)` reported as the sensitivity stage."""

    def __init__(self, progress: Progress = no_progress, stage: str = STAGE):
        self._progress = progress
        self.stage = stage

    def __call__(self, fraction: float, message: str) -> None:
        self._progress(self.stage, fraction, message)


@dataclass(frozen=True)
class WeightedBatch:
    batch: Batch
    share: float  # its samples / all calibration samples: its weight in the calibration loss


def weighted_batches(bundle: ModelBundle) -> list[WeightedBatch]:
    """The calibration batches with their shares of the calibration loss."""
    calib = bundle.calibration
    total = sum(bundle.batch_size(b) for b in calib)
    return [WeightedBatch(b, bundle.batch_size(b) / total) for b in calib]


@dataclass
class EstimatorContext:
    bundle: ModelBundle
    layers: Sequence[LayerInfo]
    choices: Sequence[Choice]
    scheme: QuantScheme
    progress: StageProgress = field(default_factory=StageProgress)
    checkpoint: Checkpoint = NO_CHECKPOINT
    weights: QuantizedWeights | None = None  # the job's; one of the context's own when not given
    # where the shards run (`sensitivity.shards`): here, one after the other, by default
    shards: ShardExecutor | None = None


    def __post_init__(self):
        if self.shards is None:
            self.shards = LocalShards()
        if self.weights is None:
            self.weights = QuantizedWeights(self.bundle, self.scheme,
                                            lambda stage, f, message: self.progress(f, message))

    @cached_property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @cached_property
    def batches(self) -> list[WeightedBatch]:
        return weighted_batches(self.bundle)

    @property
    def single_batch(self) -> bool:
        """One calibration batch: its graph can be built once and kept."""
        return len(self.bundle.calibration) == 1

    def quant_errors(self) -> dict[str, dict[Choice, float]]:
        """‖ΔW_l(b)‖² of every layer and choice under the job's quantizer."""
        return self.weights.errors(self.names, self.choices)


Estimator = Callable[[EstimatorContext, MethodConfig], SensitivityTable]
