"""Sensitivity benchmark: every method on digits-cnn and minilm, against a
PyHessian per-layer loop measured in the same run.

Each measurement runs in its own subprocess (so peak memory is its own): wall
time of the estimator (model loading excluded), HVPs / backward / forward passes
used, the achieved relative standard error where the method is a random
estimate, peak RSS and the rise of RSS over the loaded model.

The baseline is PyHessian as people use it per layer: one `pyhessian.hessian`
per layer (other parameters frozen), Hutchinson probes drawn until our
standard-error rule reaches the same tolerance. On minilm a full loop does not
fit this machine's time, so it runs on an evenly spread subset of layers and the
total is extrapolated (mean time per layer × number of layers); the same subset
is also timed with our per-layer HVP and JVP engines.

    .venv/bin/python bench/sensitivity.py                 # both models
    .venv/bin/python bench/sensitivity.py --models digits-cnn
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, bench/ comes first on sys.path and bench/kernels.py would shadow
# the `kernels` package: put the repository root there instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
CHOICES = [(2, 16), (3, 16), (4, 16), (8, 16), (16, 16)]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _llm_runs(trace: dict, subset: int) -> list[dict]:
    """smollm2-135m: the whole-model methods at the job's defaults; the per-layer Hessian
    methods (one double backward per layer, iteration or pair and per calibration
    sequence) on an evenly spread subset of layers, extrapolated. No PyHessian loop:
    its per-layer `hessian` takes one calibration batch, and this family has eight."""
    return [
        {"label": "fisher", "method": "fisher", "params": {"tol": trace["tol"]}},
        {"label": "hawq_v2", "method": "hawq_v2", "params": {"tol": trace["tol"]}},
        {"label": "lrp", "method": "lrp", "params": {}},
        {"label": "hawq_v1 (subset)", "method": "hawq_v1", "subset": subset,
         "params": {"tol": 1e-2, "max_iter": 30}},
        {"label": "interlayer hessian pairs (subset)", "method": "interlayer", "subset": subset,
         "params": {"tol": trace["tol"], "window": 2, "pairs": "hessian"}},
        {"label": "empirical", "method": "empirical", "params": {}},
    ]


def _runs(model: str, tol: float, subset: int) -> list[dict]:
    """(label, kind, method, params) for one model."""
    trace = {"tol": tol, "min_probes": 8, "max_probes": 200}
    if model == "smollm2-135m":
        return _llm_runs(trace, subset)
    heavy = model == "minilm"
    runs = [
        {"label": "hawq_v2", "method": "hawq_v2", "params": {**trace}},
        {"label": "fisher", "method": "fisher", "params": {**trace}},
        {"label": "hawq_v1", "method": "hawq_v1",
         "params": {"tol": 1e-2, "max_iter": 30} if heavy else {"tol": 1e-3, "max_iter": 100}},
        {"label": "empirical", "method": "empirical", "params": {}},
        {"label": "lrp", "method": "lrp", "params": {}},
        {"label": "interlayer (hessian pairs)", "method": "interlayer",
         "params": {**trace, "block": 8, "window": 2, "pairs": "hessian"}},
    ]
    if not heavy:
        runs.append({"label": "interlayer (measured pairs)", "method": "interlayer",
                     "params": {"window": 2, "pairs": "measured"}})
        runs.append({"label": "hawq_v2 shared", "method": "hawq_v2",
                     "params": {**trace, "mode": "shared", "block": 8}})
    else:
        for engine in ("hvp", "jvp"):
            runs.append({"label": f"hawq_v2 engine={engine} (subset)", "method": "hawq_v2",
                         "subset": subset, "params": {**trace, "engine": engine}})
    runs.append({"label": "PyHessian per-layer loop" + (" (subset)" if heavy else ""),
                 "method": "pyhessian_loop", "subset": subset if heavy else 0,
                 "params": {**trace, "block": 8}})
    return runs


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    from kernels.scheme import QuantScheme
    from sensitivity.engine import compute_table
    from sensitivity.layers import discover_layers
    from sensitivity.models import load_model

    bundle = load_model(spec["model"])
    layers = [layer for layer in discover_layers(bundle) if layer.used]
    total_layers = len(layers)
    if spec.get("subset"):  # evenly spread, first and last included
        n = min(spec["subset"], len(layers))
        layers = [layers[round(k * (len(layers) - 1) / max(n - 1, 1))] for k in range(n)]
    rss0 = _rss_mb()
    start = time.perf_counter()
    out: dict = {"layers": [layer.name for layer in layers], "total_layers": total_layers}
    if spec["method"] == "pyhessian_loop":
        from sensitivity.backends.pyhessian_backend import pyhessian_layer_trace_to_tol

        p = spec["params"]
        per_layer = {}
        for layer in layers:
            t0 = time.perf_counter()
            s = pyhessian_layer_trace_to_tol(bundle, layer.name, p["tol"], p["min_probes"],
                                             p["max_probes"], p["block"])
            per_layer[layer.name] = {"seconds": time.perf_counter() - t0, "probes": s.n,
                                     "trace": s.mean, "rel_error": s.rel_error}
        out.update(hvps=sum(v["probes"] for v in per_layer.values()),
                   max_rel_error=max(v["rel_error"] for v in per_layer.values()),
                   per_layer=per_layer)
    else:
        table = compute_table(spec["method"], bundle, layers, CHOICES, QuantScheme(), spec["params"],
                              use_cache=False)
        meta = table.meta
        out.update(
            hvps=meta.get("hvps", meta.get("backward_passes")),
            forward_passes=meta.get("forward_passes", meta.get("pair_forward_passes")),
            pair_hvps=meta.get("pair_hvps"), engine=meta.get("engine"),
            max_rel_error=meta.get("max_rel_error"), trace_seconds=meta.get("trace_seconds"),
            per_layer={n: s for n, s in table.layer_stats.items()},
        )
    out["seconds"] = time.perf_counter() - start
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["rss_before_mb"] = rss0
    return out


def _run_subprocess(spec: dict, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                              text=True, env=env, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["digits-cnn", "minilm"])
    ap.add_argument("--tol", type=float, default=0.05)
    ap.add_argument("--subset", type=int, default=6, help="minilm layers in the per-layer baseline")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core box, more threads only wait)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sensitivity.json"))
    ap.add_argument("--only", nargs="+", help="run only the methods whose label starts with one of these, "
                    "merging them into an existing results file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker)), default=float))
        return
    import torch

    out = Path(args.out)
    results = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                           "threads": args.threads, "load_avg_start": os.getloadavg()},
               "tol": args.tol, "models": {}}
    if args.only and out.exists():
        results = json.loads(out.read_text())
    for model in args.models:
        rows = results["models"].get(model, {})
        for spec in _runs(model, args.tol, args.subset):
            if args.only and not spec["label"].startswith(tuple(args.only)):
                continue
            spec = {**spec, "model": model, "threads": args.threads}
            print(f"[{model}] {spec['label']} ...", file=sys.stderr, flush=True)
            rows[spec["label"]] = {**spec, **_run_subprocess(spec, args.timeout)}
        _ratios(rows)
        results["models"][model] = rows
    results["machine"]["load_avg_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=float))
    _print(results)


def _ratios(rows: dict) -> None:
    """Baseline total (extrapolated on a subset) and each method's share of it."""
    for r in rows.values():  # a per-layer subset, extrapolated to every layer
        if "error" not in r and r.get("subset"):
            r["seconds_total_est"] = r["seconds"] / len(r["layers"]) * r["total_layers"]
            r["extrapolated"] = True
    base = next((r for label, r in rows.items() if label.startswith("PyHessian")), None)
    if base is None or "error" in base:
        return
    per_layer = base["seconds"] / len(base["layers"])
    base["seconds_total_est"] = per_layer * base["total_layers"]
    base["extrapolated"] = len(base["layers"]) < base["total_layers"]
    for r in rows.values():
        if "error" in r or r is base:
            continue
        if r.get("subset"):
            r["share_of_baseline"] = r["seconds"] / base["seconds"]  # same subset
        else:
            r["share_of_baseline"] = r["seconds"] / base["seconds_total_est"]
        r["memory_ratio"] = r["peak_rss_mb"] / base["peak_rss_mb"]
        if r.get("trace_seconds") is not None and not r.get("subset"):
            r["trace_share_of_baseline"] = r["trace_seconds"] / base["seconds_total_est"]


def _print(results: dict) -> None:
    head = f"{'model':<11}{'method':<34}{'seconds':>9}{'passes':>8}{'max rel.err':>12}" \
           f"{'peak MB':>9}{'x base time':>12}{'x base trace':>13}{'x base mem':>11}"
    print(head)
    for model, rows in results["models"].items():
        for label, r in rows.items():
            if "error" in r:
                print(f"{model:<11}{label:<34} ERROR {r['error']}")
                continue
            secs = r.get("seconds_total_est", r["seconds"])
            if r.get("extrapolated"):
                label = f"{label[:-len(' (subset)')]} (est. all layers)"
            err = r.get("max_rel_error")
            passes = r.get("hvps") or r.get("forward_passes") or 0
            share = r.get("share_of_baseline")
            mem = r.get("memory_ratio")
            tshare = r.get("trace_share_of_baseline")
            print(f"{model:<11}{label:<34}{secs:>9.1f}{passes:>8}"
                  f"{(f'{err:.1%}' if err is not None else '-'):>12}{r['peak_rss_mb']:>9.0f}"
                  f"{(f'{share:.3f}' if share is not None else '-'):>12}"
                  f"{(f'{tshare:.3f}' if tshare is not None else '-'):>13}"
                  f"{(f'{mem:.2f}' if mem is not None else '-'):>11}")


if __name__ == "__main__":
    main()
