"""The job pipeline as one plain function (DESIGN §1): load → layers →
sensitivity → solve → evaluate (→ artifact). Runs the same in the CLI, tests
and Celery workers."""

from __future__ import annotations

import dataclasses
import os
import resource
import time
from pathlib import Path

from kernels.export.formats import export_format
from kernels.export.registry import write_export
from kernels.gptq import CalibrationError
from kernels.scheme import QuantScheme
from sensitivity.bundle import ModelBundle
from sensitivity.engine import compute_table
from sensitivity.layers import discover_layers
from sensitivity.memory import release_freed_memory
from sensitivity.methods import get_method
from sensitivity.models import load_bundle
from sensitivity.progress import Progress, no_progress
from sensitivity.quantized import QuantizedWeights
from sensitivity.shards import LocalShards, ShardExecutor
from sensitivity.sources import DataSource, ModelSource
from solver import Allocation, Problem, bisect_quality, pareto, solve
from workers.accounting import totals
from workers.evaluate import (
    layer_rows,
    measure,
    nearest_uniform_not_below,
    quality_drop,
    summarize,
    uniform_points,
)
from workers.problem import (
    JobError,
    build_problem,
    candidate_choices,
    check_export,
    check_overrides,
    check_streamed,
    export_group_size,
    export_leaves_unquantized,
)
from workers.spec import (
    FrontierPoint,
    JobResult,
    JobSpec,
    Quality,
    QualitySearch,
    QualityTrial,
    SolverReport,
)

__all__ = ["JobError", "run_job", "write_artifact"]

FRONTIER_ORDER = ("avg_bits", "size_bytes", "bops", "latency_ms")


def run_job(spec: JobSpec, progress: Progress = no_progress,
            artifact_dir: str | os.PathLike | None = None, *,
            model_source: ModelSource | None = None,
            data_source: DataSource | None = None,
            shards: ShardExecutor | None = None) -> JobResult:
    """Run the job; with `artifact_dir`, also write the packed model there.

    `model_source` / `data_source`: the uploaded model (then `spec.model` is its
    name) and calibration data, when the job names uploads. `shards`: where the
    sensitivity stage's probe shards run (`sensitivity.shards`; in this process by
    default); the result's `sensitivity` says how many ran and on how many workers."""
    shards = shards if shards is not None else LocalShards()
    timings: dict[str, float] = {}
    peak_rss: dict[str, float] = {}
    weights: QuantizedWeights | None = None  # the job's quantized weights, once the layers are known

    def stage(name: str):
        timings[name] = time.perf_counter()
        progress(name, 0.0, f"{name}…")
        if weights is not None:  # the quantizer reports per layer in the stage it works for
            weights.stage = name

    def done(name: str):
        timings[name] = time.perf_counter() - timings[name]
        peak_rss[name] = peak_rss_mb()
        release_freed_memory(collect=True)  # what the stage freed, before the next one allocates
        progress(name, 1.0, f"{name} done in {timings[name]:.1f}s")

    stage("load")
    bundle = load_bundle(spec.model, model_source, data_source)
    done("load")

    stage("layers")
    check_streamed(spec, bundle)
    all_layers = discover_layers(bundle, fused=export_format(spec.export).fused_ties)
    layers = [layer for layer in all_layers if layer.used]
    unused = [layer.name for layer in all_layers if not layer.used]
    check_overrides(spec, all_layers)
    group_size = export_group_size(spec, layers)
    if group_size != spec.quant.group_size:  # the format's whole groups; the result records it
        spec = spec.model_copy(update={"quant": spec.quant.model_copy(update={"group_size": group_size})})
    check_export(spec, bundle, layers)
    # layers the export format cannot quantize (embeddings in compressed-tensors and gptq,
    # gptq's LM head) are not quantizable in this job: they stay at their stored dtype,
    # outside the average bits, like every other unquantized tensor
    kept = set(export_leaves_unquantized(spec, layers))
    layers = [layer for layer in layers if layer.name not in kept]
    scheme = spec.quant.scheme()
    weights = QuantizedWeights(bundle, scheme, progress)

    def avg_bits(choices) -> float:
        return totals(layers, choices, scheme, 0.0).avg_bits

    try:
        feasibility = build_problem(spec, bundle, layers, None, scheme)
    except ValueError as exc:
        raise JobError(str(exc)) from None
    # A budget nothing can meet fails now, not after the sensitivity computation.
    reachable = solve(feasibility)
    if reachable.status == "infeasible":
        raise JobError(f"no allocation fits the budget: {reachable.explanation}")
    done("layers")

    stage("sensitivity")
    try:
        table = compute_table(spec.method, bundle, layers, candidate_choices(spec), scheme,
                              method_params(spec), progress, weights=weights, shards=shards)
    except CalibrationError as exc:  # the calibration data cannot support GPTQ / AdaQuant
        raise JobError(str(exc)) from None
    except ValueError as exc:  # parameters that do not suit this model (JobSpec checked the rest)
        raise JobError(f"bad method_params for {spec.method}: {exc}") from exc
    if bundle.streamed is not None:
        bundle.streamed.release()  # the probe graphs' and measurements' stored block inputs
    done("sensitivity")

    stage("solve")
    problem = build_problem(spec, bundle, layers, table.omega, scheme, table.pairs)
    full_precision = bundle.evaluate(bundle.model)
    search = None
    if spec.quality_drop_range() is None:
        allocation = solve(problem)
        if allocation.status not in ("optimal", "feasible"):
            raise JobError(f"no allocation fits the budget: {allocation.explanation}")
    else:
        allocation, search = _search_quality_drop(spec, bundle, problem, scheme, full_precision, progress,
                                                  avg_bits, weights)
    kind = _frontier_kind(spec)
    frontier = _frontier(problem, kind, allocation, spec.pareto_points, own_optimum=search is None,
                         avg_bits=avg_bits)
    done("solve")

    stage("evaluate")
    chosen = dict(allocation.choices)
    rows = layer_rows(layers, chosen, table, scheme)
    summary = summarize(bundle, layers, chosen, scheme)
    uniform = uniform_points(spec, bundle, layers, scheme, kind, summary.size_bytes,
                             every_width=spec.pareto_points > 0, weights=weights)
    act_uniform = []
    if spec.quantizes_activations():  # uniform W8Ax / W4Ax beside the weight-only widths
        from workers.evaluate import uniform_activation_points
        from workers.problem import activation_widths

        act_uniform = uniform_activation_points(spec, bundle, layers, scheme, kind,
                                                activation_widths(spec, bundle, layers), weights)
    nearest = nearest_uniform_not_below(uniform, summary.size_bytes)
    quality = Quality(
        metric=bundle.headline.name, directions=bundle.directions, full_precision=full_precision,
        allocation=measure(bundle, chosen, scheme, weights), uniform=nearest.quality,
        uniform_bits=nearest.w_bits, uniform_size_bytes=nearest.size_bytes,
    )
    done("evaluate")
    result = JobResult(
        spec=spec,
        model={"name": bundle.name, "description": bundle.description, **bundle.info},
        layers=rows,
        unused_layers=unused,
        export_unquantized=sorted(kept),
        summary=summary,
        solver=SolverReport(
            status=allocation.status, objective=allocation.objective,
            solve_time_s=allocation.solve_time_s, backend=allocation.backend,
            budget_use={k: [float(u), float(lim)] for k, (u, lim) in allocation.budget_use.items()},
        ),
        quality=quality,
        frontier_kind=kind,
        pareto=frontier,
        uniform_points=uniform,
        uniform_activation_points=act_uniform,
        quality_search=search,
        sensitivity={"method": table.method, "cache_hit": table.meta.get("cache") == "hit", **table.meta,
                     "streamed": bundle.streamed is not None,
                     **_shard_report(shards, table),
                     **({"quantizer": weights.meta()} if scheme.calibrated else {})},
        timings={},
    )
    if artifact_dir is not None:
        stage("artifact")
        write_artifact(bundle, spec, result, Path(artifact_dir), weights)
        done("artifact")
    result.timings.update(timings)
    result.peak_rss_mb.update(peak_rss)
    return result


def _shard_report(shards: ShardExecutor, table) -> dict:
    """How many workers computed the table (its shards' workers; the job's own for a
    method without shards; none for a cached table) and how many shards ran."""
    summary = shards.summary()
    workers = summary["workers"] or int(table.meta.get("cache") != "hit")
    return {"workers": workers, "shards": {**summary, "workers": workers}}


def method_params(spec: JobSpec) -> dict:
    """The method's parameters, with the job's `seed` as the method's unless they name one
    (for the methods that draw random probes or starts: its part of the table's key). Seed
    0 is every method's default, so it leaves the parameters, and the key, as given."""
    params = dict(spec.method_params)
    fields = {f.name for f in dataclasses.fields(get_method(spec.method).config)}
    if "seed" in fields and spec.seed:
        params.setdefault("seed", spec.seed)
    return params


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _frontier_kind(spec: JobSpec) -> str:
    budgets = spec.solver_budgets()
    return next((k for k in FRONTIER_ORDER if k in budgets), "size_bytes")


def _frontier(problem: Problem, kind: str, allocation: Allocation, points: int, *,
              own_optimum: bool, avg_bits) -> list[FrontierPoint]:
    """The Pareto sweep of `kind`; the chosen point is the problem's own optimum, or
    (after a quality search) the point with the chosen allocation."""
    if points < 2:
        return []
    return [
        FrontierPoint(cost=p.cost, objective=p.objective, avg_bits=avg_bits(p.choices),
                      chosen=p.chosen if own_optimum else dict(p.choices) == dict(allocation.choices))
        for p in pareto(problem, kind, points=points)
    ]


def _search_quality_drop(spec: JobSpec, bundle: ModelBundle, problem: Problem, scheme: QuantScheme,
                         full_precision: dict[str, float], progress: Progress, avg_bits,
                         weights: QuantizedWeights | None = None):
    lo, hi = spec.quality_drop_range()
    def evaluate(allocation: Allocation) -> float:
        drop = quality_drop(bundle, full_precision, measure(bundle, allocation.choices, scheme, weights))
        progress("solve", 0.5, f"quality drop {drop:.4g} at {allocation.budget_use['size_bytes'][0]:.0f} B")
        return drop

    result = bisect_quality(problem, evaluate, lo, hi, kind="size_bytes", max_evals=spec.quality_evals)
    trials = [
        QualityTrial(size_bytes=t.budget, drop=t.drop, avg_bits=avg_bits(t.allocation.choices))
        for t in result.trials
    ]
    search = QualitySearch(min_drop=lo, max_drop=hi, reached=result.reached, message=result.message,
                           trials=trials)
    if result.best is None:
        raise JobError(f"max_quality_drop {hi}: {result.message}")
    return result.best.allocation, search


def write_artifact(bundle: ModelBundle, spec: JobSpec, result: JobResult, directory: Path,
                   weights: QuantizedWeights | None = None) -> Path:
    """The result's allocation in the job's export format (`model.safetensors` packed +
    `allocation.json` for bitalloc's own), written into `directory`; `weights`: the
    job's quantized weights (the evaluated model is the one packed)."""
    q = spec.quant
    scheme = q.scheme()
    configs = {layer.name: scheme.config(layer.w_bits) for layer in result.layers}
    model, quantized = bundle.model, None
    a_bits = {layer.name: layer.a_bits for layer in result.layers if layer.a_bits < 16}
    if scheme.calibrated or a_bits:
        weights = weights if weights is not None else QuantizedWeights(bundle, scheme)
    if scheme.calibrated:  # GPTQ / AdaQuant codes, corrected biases, re-estimated BatchNorm
        # the weights only: the input quantizers are stored as records, not as hooks
        applied = weights.apply({layer.name: (layer.w_bits, 16) for layer in result.layers})
        model, quantized = applied.model, applied.quantized
    allocation = {
        "model": spec.model,
        "layers": {layer.name: {"w_bits": layer.w_bits, "a_bits": layer.a_bits} for layer in result.layers},
        "unused_layers": result.unused_layers,
        "export_unquantized": result.export_unquantized,
        "quant": q.model_dump(),
        "export": spec.export,
        "summary": result.summary.model_dump(),
    }
    if a_bits:  # each quantized input's bits, mode, symmetry and (static) scale and zero point
        allocation["activations"] = weights.activations.records(a_bits)
    if bundle.streamed is not None:  # bitalloc's artifact (check_streamed), packed block by block
        from kernels.artifact import save_artifact

        return save_artifact(model, configs, directory, allocation, packed=bundle.streamed.packed(configs))
    return write_export(spec.export, model, configs, directory, allocation,
                        tokenizer=bundle.tokenizer, quantized=quantized,
                        gguf_source=bundle.info.get("gguf_file"))
