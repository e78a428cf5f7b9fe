"""`empirical` (AdaQuant / MixDQ / AIMET): Ω_l(b) = L(only layer l at b) − L(full
precision), measured on the calibration data for every candidate width.

One forward pass over the calibration data per layer and quantized choice
(16-bit choices measure the fp16 rounding of storage). Values can be negative: a quantization that
happens to lower the calibration loss is reported as measured.
Params: none (`sensitivity.methods.EmpiricalConfig`).
"""

from __future__ import annotations

import time
from functools import partial

from kernels.fake_quant import fake_quantize_weight
from kernels.scheme import QuantScheme
from sensitivity.bundle import ModelBundle
from sensitivity.estimators.context import EstimatorContext
from sensitivity.measure import calibration_loss, loss_with
from sensitivity.methods import EmpiricalConfig
from sensitivity.quantized import QuantizedWeights
from sensitivity.shards import LocalShards, MeasureShard, ShardResult
from sensitivity.table import Choice, SensitivityTable, choice_key, parse_choice_key

ROUND_LAYERS = 8  # layers measured between checkpoints, a shard each: 8 workers' worth, like a probe round


class MeasureRunner:
    """The calibration loss with only the shard's layer at each of its choices."""

    def __init__(self, bundle: ModelBundle, weights: QuantizedWeights):
        self.bundle, self.weights = bundle, weights

    def __call__(self, shard: MeasureShard) -> ShardResult:
        start = time.perf_counter()
        streamed = self.bundle.streamed
        if streamed is not None:  # the layer's block from its stored input, the blocks above once
            scheme = self.weights.scheme
            losses = streamed.losses.losses([(shard.layer, partial(fake_quantize_weight,
                                                                   config=scheme.for_choice(c)))
                                             for c in shard.choices])
        else:
            losses = [loss_with(self.bundle, self.weights, [(shard.layer, c)]) for c in shard.choices]
        return ShardResult([losses], len(losses), time.perf_counter() - start)

    def base_loss(self) -> float:
        """The full-precision calibration loss."""
        streamed = self.bundle.streamed
        return streamed.losses.base if streamed is not None else calibration_loss(self.bundle)


def measure_runner(bundle: ModelBundle, scheme: dict) -> MeasureRunner:
    """What another process measures a shard with: its own RTN weights on the job's grid."""
    quant = QuantScheme(**scheme)
    if quant.calibrated:
        raise ValueError(f"a {quant.algorithm} layer cannot be measured elsewhere: its codes "
                         "depend on the job's own calibration pass")
    return MeasureRunner(bundle, QuantizedWeights(bundle, quant))


def estimate(ctx: EstimatorContext, config: EmpiricalConfig) -> SensitivityTable:
    """Layers are measured in rounds of ROUND_LAYERS, a shard each (`sensitivity.shards`):
    on the context's shard executor under RTN, here under GPTQ / AdaQuant (whose codes
    the job's own `weights` hold)."""
    start = time.perf_counter()
    bundle, names = ctx.bundle, ctx.names
    qw = ctx.weights
    runner = MeasureRunner(bundle, qw)
    base = runner.base_loss()
    saved = ctx.checkpoint.load("empirical") or {}
    omega: dict[str, dict[Choice, float]] = {
        n: {parse_choice_key(k): v for k, v in row.items()} for n, row in saved.get("omega", {}).items()}
    # GPTQ / AdaQuant codes and a streamed model's stored block inputs stay with this worker
    executor = LocalShards() if qw.scheme.calibrated or bundle.streamed is not None else ctx.shards
    scheme = tuple(sorted(qw.scheme.as_dict().items()))
    todo = [n for n in names if n not in omega]
    forwards = 0
    measured, t0 = len(names) - len(todo), time.perf_counter()
    for lo in range(0, len(todo), ROUND_LAYERS):
        part = todo[lo:lo + ROUND_LAYERS]
        shards = [MeasureShard("empirical", n, tuple(ctx.choices), scheme) for n in part]

        def done(k: int, first: int = lo) -> None:
            n = measured + first + k
            per_layer = (time.perf_counter() - t0) / max(first + k, 1)
            ctx.progress(n / len(names), f"{n}/{len(names)} layers measured; "
                                         f"~{(len(todo) - first - k) * per_layer:.0f}s left")

        for shard, result in zip(shards, executor.run(shards, runner, done)):
            omega[shard.layer] = {c: loss - base for c, loss in zip(shard.choices, result.samples[0])}
            forwards += result.evaluations
        ctx.checkpoint.save("empirical", {
            "omega": {n: {choice_key(c): v for c, v in row.items()} for n, row in omega.items()}})
    return SensitivityTable(
        method="empirical",
        omega={n: omega[n] for n in names},
        layer_stats={},
        meta={"params": config.meta_params(), "fp_loss": base,
              "forward_passes": forwards * len(bundle.calibration),
              "seconds": time.perf_counter() - start},
    )
