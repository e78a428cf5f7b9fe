"""The one entry point the pipeline calls: params → cache lookup → estimator → store.

`compute_table` parses the method's parameters once (`sensitivity.methods`: a
clear ValueError for an unknown method or a bad parameter), then returns the
cached table when one exists for the same weights, calibration data, method,
parameters, quantizer config, choices and layers (`meta["cache"] = "hit"`), so a
second job with another budget does not recompute. Otherwise it runs the
estimator with a checkpoint open under the table's key (`meta["cache"] =
"miss"`); an interrupted run resumes from the probes and layers it had finished.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from kernels.scheme import ACTIVATION_BITS, QuantScheme
from sensitivity.bundle import ModelBundle
from sensitivity.cache import TableCache, table_key
from sensitivity.checkpoint import NO_CHECKPOINT, Checkpoint
from sensitivity.estimators import get_estimator
from sensitivity.estimators.activation_terms import add_activation_terms
from sensitivity.estimators.context import EstimatorContext, StageProgress
from sensitivity.layers import LayerInfo
from sensitivity.methods import check_activation_method, parse_method_params
from sensitivity.progress import Progress, no_progress
from sensitivity.quantized import QuantizedWeights
from sensitivity.shards import ShardExecutor
from sensitivity.table import Choice, SensitivityTable


def compute_table(
    method: str, bundle: ModelBundle, layers: Sequence[LayerInfo], choices: Sequence[Choice],
    quant: QuantScheme, params: dict[str, Any], progress: Progress = no_progress, *,
    cache: TableCache | None = None, use_cache: bool = True, checkpoint_interval_s: float = 10.0,
    weights: QuantizedWeights | None = None, shards: ShardExecutor | None = None,
) -> SensitivityTable:
    """`weights`: the job's provider of quantized weights (for `quant`), so the table and
    the evaluation share one set of GPTQ / AdaQuant results; a fresh one when not given.
    `shards`: where Hutchinson's probe shards run (`sensitivity.shards`; here by default);
    the table is the same wherever they run, so it is not part of the key."""
    config = parse_method_params(method, params)
    if any(c[1] < ACTIVATION_BITS for c in choices):
        check_activation_method(method)
    if weights is not None and weights.scheme != quant:
        raise ValueError(f"the quantized weights are for {weights.scheme}, the table for {quant}")
    estimator = get_estimator(method)
    params = dict(params)
    choices = sorted(choices)

    # the estimator sees the weight choices (a = 16); activation terms are added after
    weight_choices = sorted({(c[0], ACTIVATION_BITS) for c in choices})
    joint = weight_choices != choices

    def run(checkpoint: Checkpoint) -> SensitivityTable:
        ctx = EstimatorContext(bundle, layers, weight_choices, quant, StageProgress(progress), checkpoint,
                               weights, shards)
        table = estimator(ctx, config)
        if joint:
            table = add_activation_terms(ctx, table, method, config, choices)
        return table

    if not use_cache:
        table = run(NO_CHECKPOINT)
        table.meta["cache"] = "off"
        return table
    cache = cache or TableCache()
    start = time.perf_counter()
    key = table_key(method, bundle, layers, choices, quant, params)  # the user's params: keys stay put
    hit = cache.load(key)
    if hit is not None:
        hit.meta.update(cache="hit", cache_key=key, cache_seconds=time.perf_counter() - start)
        progress("sensitivity", 1.0, f"{method}: reused cached table {key[:12]}")
        return hit
    ckpt = Checkpoint(cache.partial_path(key), interval_s=checkpoint_interval_s)
    resumed = ckpt.stored() is not None
    table = run(ckpt)
    table.meta.update(cache="miss", cache_key=key, resumed=resumed)
    cache.store(key, table)
    ckpt.clear()
    return table
