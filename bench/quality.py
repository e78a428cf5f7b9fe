"""Allocation quality benchmark: every sensitivity method against uniform and random
allocation at the same size, on digits-cnn, digits-vit and minilm (and smollm2-135m
when asked for: `--models smollm2-135m`, about an hour on two cores).

For each model and average-bits budget (scale and zero overhead included) it
measures the real quality (fake-quantized weights, the bundle's own evaluation) of

- `uniform`: one width for every layer, the largest whose average bits (overhead
  included) is <= the budget (2 bits when none is); no search. The next width up
  (`uniform_above`, the smallest uniform model at least as large) is recorded too;
- `random`: 5 seeds of a random sensitivity Ω_l(b) = u_l·‖ΔW_l(b)‖²/‖W_l‖² with
  u_l ~ U(0, 1), solved by the same integer program (so it fills the budget the
  same way); mean, standard deviation, min and max;
- every method (hawq_v1, hawq_v2, fisher, empirical, lrp, interlayer with its pair
  terms in the solver), with predicted ΣΩ, sensitivity time and solve time.

A method's table is computed once per model (through the table cache, so a rerun
reuses it): Ω does not depend on the budget.

    .venv/bin/python bench/quality.py                 # all models; JSON, docs/results.md, docs/quality.png
    .venv/bin/python bench/quality.py --render        # only redraw the docs from the JSON
    .venv/bin/python bench/quality.py --models smollm2-135m --methods hawq_v1   # add methods to a model

With `--quantizer rtn gptq adaquant` it compares the quantizers instead (uniform and
the `fisher` allocation under each, bench/quantizers.py): bench/results/quantizers.json
and the quantizer sections of docs/results.md and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

# run as a script, bench/ would come first on the path and bench/solver.py shadow `solver`
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import quantizer_report, quantizers  # noqa: E402
from bench.quality_report import LLM_MODELS, render  # noqa: E402
from kernels.scheme import ALGORITHMS, QuantScheme  # noqa: E402
from sensitivity.engine import compute_table  # noqa: E402
from sensitivity.layers import discover_layers  # noqa: E402
from sensitivity.models import load_model  # noqa: E402
from sensitivity.omega import weight_norms  # noqa: E402
from sensitivity.quantized import QuantizedWeights  # noqa: E402
from solver import solve  # noqa: E402
from workers.evaluate import measure, uniform_points  # noqa: E402
from workers.problem import build_problem, candidate_choices  # noqa: E402
from workers.spec import JobSpec  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "quality.json"
LLM_RESULTS = ROOT / "bench" / "results" / "quality-llm.json"
QUANTIZER_RESULTS = ROOT / "bench" / "results" / "quantizers.json"
QUANTIZER_MODELS = ("digits-cnn", "digits-vit", "minilm", "smollm2-135m")
MODELS = ("digits-cnn", "digits-vit", "minilm")
BUDGETS = (2.5, 3.0, 3.5, 4.0, 5.0)
RANDOM_SEEDS = 5
TRACE = {"tol": 0.1, "max_probes": 30}
# probe caps keep the whole run near 20 minutes on two cores; minilm's power
# iteration is the slowest part (one double backward per iteration per layer)
METHOD_PARAMS = {
    "hawq_v1": {"tol": 0.01, "max_iter": 30},
    "hawq_v2": TRACE,
    "fisher": TRACE,
    "empirical": {},
    "lrp": {},
    "interlayer": {**TRACE, "window": 2},
}
MODEL_PARAMS = {"minilm": {"hawq_v1": {"tol": 0.02, "max_iter": 10}}}
# smollm2-135m's per-layer Hessian methods cost one double backward per layer, iteration
# (or pair and width) and calibration sequence, ~0.35 s each on two cores: over its 8
# sequences hawq_v1 at 10 iterations would take ~1.6 h and interlayer's Hessian pairs ~1 h,
# and `empirical`'s one forward pass per layer, width and sequence (211 x 7 x 8) ~2 h,
# so they run on the first CALIBRATION_SUBSET sequences (said in the docs), hawq_v1 with a
# loose cap and interlayer's pairs between neighbours only
CALIBRATION_SUBSET = {"smollm2-135m": {"hawq_v1": 2, "interlayer": 2, "empirical": 2}}
MODEL_PARAMS["smollm2-135m"] = {"hawq_v1": {"tol": 0.05, "max_iter": 3},
                                "interlayer": {**TRACE, "window": 1}}
METHODS = tuple(METHOD_PARAMS)
# extra entries, label -> (method, params): interlayer with measured pair terms, where
# L(i, j) for every pair and width pair is affordable (not on minilm)
VARIANTS = {
    "interlayer_measured": ("interlayer", {"window": 2, "pairs": "measured"}),
}
VARIANT_MODELS = ("digits-cnn", "digits-vit")


def entries(model: str, only=None) -> dict[str, tuple[str, dict]]:
    """label -> (method, params) for one model (`only`: these labels)."""
    out = {m: (m, MODEL_PARAMS.get(model, {}).get(m, p)) for m, p in METHOD_PARAMS.items()}
    if model in VARIANT_MODELS:
        out.update(VARIANTS)
    return {k: v for k, v in out.items() if only is None or k in only}


def method_bundle(bundle, label: str):
    """The bundle a method's table is computed on: the first sequences only where
    CALIBRATION_SUBSET says so."""
    n = CALIBRATION_SUBSET.get(bundle.name, {}).get(label)
    return bundle if n is None else dataclasses.replace(bundle, calibration=bundle.calibration[:n])


def spec_for(model: str, budget: float) -> JobSpec:
    """The job the solver problem is built from (method settings do not enter it)."""
    return JobSpec(model=model, budgets={"avg_bits": budget}, pareto_points=0)


def random_omega(bundle, names, choices, base, seed: int) -> dict:
    """Ω_l(b) = u_l · relative quantization error, u_l ~ U(0, 1): sensitivity without information."""
    rng = random.Random(seed)
    errors = QuantizedWeights(bundle, base).errors(names, choices)
    norms = weight_norms(bundle.model, names)
    omega = {}
    for n in names:
        u = rng.random()
        omega[n] = {c: u * e / norms[n] if norms[n] > 0 else 0.0 for c, e in errors[n].items()}
    return omega


def point(bundle, layers, base, spec, omega, pairs=None) -> dict:
    problem = build_problem(spec, bundle, layers, omega, base, pairs)
    allocation = solve(problem)
    if not allocation.ok:
        return {"status": allocation.status, "explanation": str(allocation.explanation)}
    quality = measure(bundle, dict(allocation.choices), base)
    return {
        "status": allocation.status,
        "avg_bits": allocation.budget_use["avg_bits"][0],
        "quality": quality,
        "predicted_omega": allocation.objective,
        "solve_s": allocation.solve_time_s,
        "bits": {n: c[0] for n, c in allocation.choices.items()},
    }


def run_model(name: str, log, only=None, previous: dict | None = None) -> dict:
    """Every method on one model; with `only` (labels) just those, merged into `previous`
    (this model's earlier results), whose uniform and random rows are kept."""
    t0 = time.perf_counter()
    bundle = load_model(name)
    load_s = time.perf_counter() - t0
    layers = [layer for layer in discover_layers(bundle) if layer.used]
    names = [layer.name for layer in layers]
    metric = bundle.quality_metric
    base = QuantScheme()
    choices = candidate_choices(spec_for(name, BUDGETS[0]))
    merge = only is not None and previous is not None
    if merge:
        full = previous["full_precision"]
        out = {**previous, "methods": dict(previous["methods"]),
               "budgets": {b: dict(r) for b, r in previous["budgets"].items()}}
    else:
        full = bundle.evaluate(bundle.model)
        uniform = uniform_points(spec_for(name, BUDGETS[0]), bundle, layers, base, "avg_bits", 0.0,
                                 every_width=True)
        out = {
            "metric": metric, "full_precision": full, "layers": len(layers),
            "params": sum(layer.params for layer in layers), "load_s": load_s, "info": bundle.info,
            "uniform_curve": [{"w_bits": p.w_bits, "avg_bits": p.avg_bits, "quality": p.quality}
                              for p in uniform],
            "methods": {}, "budgets": {},
        }
    log(f"{name}: {len(layers)} layers, full precision {metric} {full[metric]:.2f}, load {load_s:.1f}s")
    tables = {}
    for label, (method, params) in entries(name, only).items():
        t = time.perf_counter()
        on = method_bundle(bundle, label)
        table = compute_table(method, on, layers, choices, base, params)
        wall = time.perf_counter() - t
        tables[label] = table
        out["methods"][label] = {
            "method": method, "params": params, "cache": table.meta.get("cache"),
            "sensitivity_s": float(table.meta.get("seconds", wall)), "wall_s": wall,
            "pairs": len(table.pairs), "calibration_sequences": len(on.calibration),
        }
        secs = out["methods"][label]["sensitivity_s"]
        log(f"  {label}: table in {secs:.1f}s ({table.meta.get('cache')})")
    if not merge:
        randoms = [random_omega(bundle, names, choices, base, seed) for seed in range(RANDOM_SEEDS)]
    for budget in BUDGETS:
        spec = spec_for(name, budget)
        if merge:
            row = out["budgets"][str(budget)]
        else:
            row = {}
            below = [p for p in uniform if p.avg_bits <= budget + 1e-9]
            at = below[-1] if below else uniform[0]
            above = next((p for p in uniform if p.avg_bits >= budget - 1e-9), uniform[-1])
            row["uniform"] = {"w_bits": at.w_bits, "avg_bits": at.avg_bits, "quality": at.quality}
            row["uniform_above"] = {"w_bits": above.w_bits, "avg_bits": above.avg_bits,
                                    "quality": above.quality}
            runs = [point(bundle, layers, base, spec, om) for om in randoms]
            row["random"] = summarize_random(runs, metric)
        for label, table in tables.items():
            row[label] = point(bundle, layers, base, spec, table.omega, table.pairs)
        out["budgets"][str(budget)] = row
        log(f"  {budget} bits: " + ", ".join(
            f"{k} {quality_of(v, metric):.2f}" for k, v in row.items() if quality_of(v, metric) is not None))
    out["seconds"] = time.perf_counter() - t0 + (previous.get("seconds", 0.0) if merge else 0.0)
    return out


def summarize_random(runs: list[dict], metric: str) -> dict:
    ok = [r for r in runs if "quality" in r]
    q = [r["quality"][metric] for r in ok]
    return {
        "seeds": len(runs), "solved": len(ok),
        "quality": {k: statistics.mean(r["quality"][k] for r in ok) for k in ok[0]["quality"]} if ok else {},
        "std": statistics.stdev(q) if len(q) > 1 else 0.0, "min": min(q, default=None),
        "max": max(q, default=None),
        "avg_bits": statistics.mean(r["avg_bits"] for r in ok) if ok else None,
        "solve_s": statistics.mean(r["solve_s"] for r in ok) if ok else None,
        "runs": [r.get("quality", {}).get(metric) for r in runs],
    }


def quality_of(entry: dict, metric: str) -> float | None:
    return entry.get("quality", {}).get(metric)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=QUANTIZER_MODELS,
                    help=f"default {' '.join(MODELS)}")
    ap.add_argument("--methods", nargs="+",
                    help="only these methods (labels), merged into the model's earlier results "
                         "when it has some")
    ap.add_argument("--quantizer", nargs="+", choices=ALGORITHMS,
                    help="compare these quantizers instead (bench/quantizers.py)")
    ap.add_argument("--activations", action="store_true",
                    help="uniform W8A8/W4A8/W8A4/W4A4 against mixed (w, a) allocations at the same "
                         "BOPs instead (bench/activations.py)")
    ap.add_argument("--render", action="store_true", help="only rewrite docs from the JSON")
    ap.add_argument("--no-render", action="store_true", help="write the JSON only")
    ap.add_argument("--out", type=Path, help=f"results JSON (read, updated per model; default "
                    f"{RESULTS.relative_to(ROOT)}, or {LLM_RESULTS.relative_to(ROOT)} for "
                    f"{', '.join(LLM_MODELS)})")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: these models are small and the machine shared)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.activations:
        from bench import activations

        return activations.main(["--models", *(args.models or activations.MODELS)])
    if args.quantizer:
        return main_quantizers(args)
    args.models = args.models or list(MODELS)
    llm = set(args.models) <= set(LLM_MODELS)
    if not llm and set(args.models) & set(LLM_MODELS):
        ap.error(f"{', '.join(LLM_MODELS)} run on their own (their results have their own page)")
    out: Path = args.out or (LLM_RESULTS if llm else RESULTS)
    if args.render:
        render(json.loads(out.read_text()))
        return 0
    results = json.loads(out.read_text()) if out.exists() else {}
    results.setdefault("models", {})
    results["source"] = str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)
    for name in args.models:
        results["threads"] = args.threads
        previous = results["models"].get(name)
        results["models"][name] = run_model(name, lambda msg: print(msg, flush=True), args.methods,
                                            previous)
        results["machine"] = {"platform": platform.platform(), "python": platform.python_version()}
        results["budgets"], results["methods"] = list(BUDGETS), list(METHODS)
        # per-model wall times of the runs that produced the numbers (a rerun with cached
        # tables is faster; each table's own compute time stays in its sensitivity_s)
        results["run_seconds"] = sum(m["seconds"] for m in results["models"].values())
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    if not args.no_render:
        render(results)
    print(f"done; {results['run_seconds']:.0f}s over {len(results['models'])} models; wrote {out}")
    return 0


def main_quantizers(args) -> int:
    out: Path = args.out or QUANTIZER_RESULTS
    if args.render:
        quantizer_report.render(json.loads(out.read_text()))
        return 0
    results = json.loads(out.read_text()) if out.exists() else {}
    results.setdefault("models", {})
    results["source"] = str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)
    for name in args.models or list(QUANTIZER_MODELS):
        results["models"][name] = quantizers.run_model(name, list(args.quantizer),
                                                       lambda msg: print(msg, flush=True))
        results["machine"] = (f"{platform.platform()}, {os.cpu_count()} cores, "
                              f"{args.threads} torch thread(s)")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    if not args.no_render:
        quantizer_report.render(results)
    print(f"done; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
