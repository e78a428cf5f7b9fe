"""The job pipeline as one plain function (DESIGN §1): load → layers →
sensitivity → solve → evaluate. Runs the same in the CLI, tests and Celery."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from kernels.artifact import save_artifact
from kernels.fake_quant import fake_quantize_model
from kernels.quantizer import QuantConfig
from sensitivity.bundle import ModelBundle
from sensitivity.estimators import get_estimator
from sensitivity.layers import LayerInfo, discover_layers
from sensitivity.models import load_model
from sensitivity.progress import Progress, no_progress
from sensitivity.table import Choice, choice_key
from solver.ilp import solve
from solver.problem import Budget, Layer, Option, Problem
from workers.costs import choice_costs, fixed_bytes, quant_config, stored_bytes
from workers.spec import JobResult, JobSpec, LayerResult, Quality, SolverReport, Summary

A_BITS = 16  # activations stay in 16-bit until activation quantization is asked for
UNIFORM_WIDTHS = (2, 3, 4, 5, 6, 8, 16)


class JobError(Exception):
    """A job that cannot produce a result, with a message for the user."""


def run_job(spec: JobSpec, progress: Progress = no_progress,
            artifact_dir: str | os.PathLike | None = None) -> JobResult:
    """Run the job; with `artifact_dir`, also write the packed model there."""
    timings: dict[str, float] = {}

    def stage(name: str):
        timings[name] = time.perf_counter()
        progress(name, 0.0, f"{name}…")

    def done(name: str):
        timings[name] = time.perf_counter() - timings[name]
        progress(name, 1.0, f"{name} done in {timings[name]:.1f}s")

    estimator = get_estimator(spec.method)  # fail fast on an unknown method
    stage("load")
    bundle = load_model(spec.model)
    done("load")

    stage("layers")
    all_layers = discover_layers(bundle)
    layers = [layer for layer in all_layers if layer.used]
    unused = [layer.name for layer in all_layers if not layer.used]
    _check_overrides(spec, all_layers)
    done("layers")

    base = QuantConfig(4, spec.quant.group_size, spec.quant.symmetric, spec.quant.mse_clip)
    # A budget nothing can meet fails now, not after the sensitivity computation.
    reachable = solve(build_problem(spec, bundle, layers, None, base))
    if reachable.status == "infeasible":
        raise JobError(f"no allocation fits the budget: {reachable.explanation}")
    choices = [(b, A_BITS) for b in spec.weight_bits]
    for bits in spec.overrides.pins.values():
        if (bits, A_BITS) not in choices:
            choices.append((bits, A_BITS))
    stage("sensitivity")
    try:
        table = estimator(bundle, layers, sorted(choices), base, dict(spec.method_params), progress)
    except TypeError as exc:  # unknown estimator parameters
        raise JobError(f"bad method_params for {spec.method}: {exc}") from exc
    done("sensitivity")

    stage("solve")
    problem = build_problem(spec, bundle, layers, table.omega, base)
    allocation = solve(problem)
    if allocation.status not in ("optimal", "feasible"):
        raise JobError(f"no allocation fits the budget: {allocation.explanation}")
    done("solve")

    stage("evaluate")
    result = _evaluate(spec, bundle, layers, unused, table, allocation, base)
    done("evaluate")
    if artifact_dir is not None:
        stage("artifact")
        write_artifact(bundle, spec, result, Path(artifact_dir))
        done("artifact")
    result.timings.update(timings)
    return result


def write_artifact(bundle: ModelBundle, spec: JobSpec, result: JobResult, directory: Path) -> Path:
    """`model.safetensors` (packed) + `allocation.json` for the result's allocation."""
    q = spec.quant
    configs = {layer.name: QuantConfig(layer.w_bits, q.group_size, q.symmetric, q.mse_clip)
               for layer in result.layers}
    allocation = {
        "model": spec.model,
        "layers": {layer.name: {"w_bits": layer.w_bits, "a_bits": layer.a_bits} for layer in result.layers},
        "unused_layers": result.unused_layers,
        "quant": q.model_dump(),
        "summary": result.summary.model_dump(),
    }
    return save_artifact(bundle.model, configs, directory, allocation)


def build_problem(spec: JobSpec, bundle: ModelBundle, layers: Sequence[LayerInfo],
                  omega: dict[str, dict[Choice, float]] | None, base: QuantConfig) -> Problem:
    """The integer program of the job; `omega=None` gives the feasibility problem."""
    ov = spec.overrides
    allowed_widths = set(spec.weight_bits)
    solver_layers, allowed = [], {}
    for layer in layers:
        widths = {16} if layer.name in ov.exclude else set(ov.allowed.get(layer.name, allowed_widths))
        if layer.name in ov.pins:
            widths.add(ov.pins[layer.name])
        options = {
            (b, A_BITS): Option(omega=omega[layer.name].get((b, A_BITS), 0.0) if omega else 0.0,
                                costs=choice_costs(layer, (b, A_BITS), base))
            for b in sorted(widths)
        }
        solver_layers.append(Layer(layer.name, layer.params, options, layer.group))
        if layer.name in ov.allowed:
            allowed[layer.name] = frozenset((b, A_BITS) for b in ov.allowed[layer.name])
    return Problem(
        layers=solver_layers,
        budgets=[Budget(kind, limit) for kind, limit in spec.solver_budgets().items()],
        fixed_costs={"size_bytes": fixed_bytes(bundle.model, layers)},
        pins={name: (bits, A_BITS) for name, bits in ov.pins.items()},
        allowed=allowed,
    )


def _check_overrides(spec: JobSpec, layers: Sequence[LayerInfo]) -> None:
    known = {layer.name for layer in layers if layer.used}
    ov = spec.overrides
    named = set(ov.pins) | set(ov.allowed) | set(ov.exclude)
    unknown = sorted(named - known)
    if unknown:
        raise JobError(f"unknown layers in overrides: {', '.join(unknown)}; "
                       f"quantizable layers: {', '.join(sorted(known))}")
    clash = sorted(set(ov.pins) & set(ov.exclude))
    if clash:
        raise JobError(f"layers both pinned and excluded: {', '.join(clash)}")
    if "latency_ms" in spec.budgets:
        raise JobError("latency_ms needs a per-layer latency table, which this job does not have")


def _evaluate(spec, bundle, layers, unused, table, allocation, base) -> JobResult:
    chosen: dict[str, Choice] = dict(allocation.choices)
    configs = {name: quant_config(c, base) for name, c in chosen.items()}
    fixed = fixed_bytes(bundle.model, layers)
    rows = []
    for layer in layers:
        c = chosen[layer.name]
        costs = choice_costs(layer, c, base)
        rows.append(LayerResult(
            name=layer.name, kind=layer.kind, shape=list(layer.shape), params=layer.params,
            macs=layer.macs, group=layer.group, w_bits=c[0], a_bits=c[1],
            bits_per_weight=costs["avg_bits"] / layer.params, bytes=costs["size_bytes"],
            omega=table.omega[layer.name].get(c, 0.0),
            omega_by_bits={choice_key(k): v for k, v in table.omega[layer.name].items()},
            stats=table.layer_stats.get(layer.name, {}),
        ))
    total_params = sum(layer.params for layer in layers)
    layer_bytes = sum(r.bytes for r in rows)
    summary = Summary(
        size_bytes=layer_bytes + fixed,
        full_precision_bytes=stored_bytes(bundle.model),
        quantized_layer_bytes=layer_bytes,
        avg_bits=8 * layer_bytes / total_params,
        avg_bits_no_overhead=sum(r.w_bits * r.params for r in rows) / total_params,
        bops=sum(r.macs * r.w_bits * r.a_bits for r in rows),
    )
    uniform_bits, uniform_bytes = _uniform_not_below(layers, base, layer_bytes)
    uniform_configs = {layer.name: quant_config((uniform_bits, A_BITS), base) for layer in layers}
    quality = Quality(
        metric=bundle.quality_metric,
        full_precision=bundle.evaluate(bundle.model),
        allocation=bundle.evaluate(fake_quantize_model(bundle.model, configs)),
        uniform=bundle.evaluate(fake_quantize_model(bundle.model, uniform_configs)),
        uniform_bits=uniform_bits,
        uniform_size_bytes=uniform_bytes + fixed,
    )
    budget_use = {k: [float(u), float(lim)] for k, (u, lim) in allocation.budget_use.items()}
    return JobResult(
        spec=spec,
        model={"name": bundle.name, "description": bundle.description, **bundle.info},
        layers=rows,
        unused_layers=unused,
        summary=summary,
        solver=SolverReport(status=allocation.status, objective=allocation.objective,
                            solve_time_s=allocation.solve_time_s, backend=allocation.backend,
                            budget_use=budget_use),
        quality=quality,
        sensitivity={"method": table.method, **table.meta},
        timings={},
    )


def _uniform_not_below(layers, base, allocation_bytes: float) -> tuple[int, float]:
    """The uniform width whose quantized-layer size is the nearest not below the
    allocation's (16-bit when none is)."""
    for bits in UNIFORM_WIDTHS:
        size = sum(choice_costs(layer, (bits, A_BITS), base)["size_bytes"] for layer in layers)
        if size >= allocation_bytes - 1e-9:
            return bits, size
    return 16, sum(choice_costs(layer, (16, A_BITS), base)["size_bytes"] for layer in layers)
