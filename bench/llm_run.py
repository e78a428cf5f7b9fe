"""A whole job on the built-in causal LM, as `bitalloc run` runs it: wall time and
the process's peak RSS at the end of every stage (`ru_maxrss` only grows, so each
figure is the peak up to that point), with the result's headline quality.

    OMP_NUM_THREADS=1 .venv/bin/python bench/llm_run.py --budget avg_bits=4 --method fisher

The sensitivity table is computed afresh: the run uses its own table cache (the
dequantized GGUF conversion is reused from the normal cache when it is there).
Writes `bench/results/llm_run.json` (one entry per method and budget).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/kernels.py would shadow the `kernels` package: the repository root comes first
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
RESULTS = ROOT / "bench" / "results" / "llm_run.json"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fresh_tables() -> None:
    """A new cache root whose `gguf` folder is the usual one (the conversion is kept)."""
    usual = Path(os.environ.get("BITALLOC_CACHE") or Path.home() / ".cache" / "bitalloc")
    root = Path(tempfile.mkdtemp(prefix="bitalloc-llm-bench-"))
    (usual / "gguf").mkdir(parents=True, exist_ok=True)
    (root / "gguf").symlink_to(usual / "gguf")
    os.environ["BITALLOC_CACHE"] = str(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="fisher")
    ap.add_argument("--budget", default="avg_bits=4", help="KIND=LIMIT")
    ap.add_argument("--pareto-points", type=int, default=16)
    ap.add_argument("--param", action="append", default=[], metavar="KEY=INT",
                    help="integer method parameter, e.g. block=4")
    args = ap.parse_args()
    fresh_tables()
    from workers.pipeline import run_job
    from workers.spec import JobSpec

    kind, limit = args.budget.split("=")
    params = {k: int(v) for k, v in (p.split("=") for p in args.param)}
    spec = JobSpec(model=args.model, method=args.method, budgets={kind: float(limit)},
                   pareto_points=args.pareto_points, method_params=params)
    stages: dict[str, float] = {}

    def progress(stage: str, fraction: float, message: str) -> None:
        if fraction >= 1.0:
            stages[stage] = round(peak_rss_mb(), 1)
            print(f"{stage}: {message}; peak RSS so far {stages[stage]:.0f} MB", flush=True)

    start = time.perf_counter()
    result = run_job(spec, progress)
    wall = time.perf_counter() - start
    q = result.quality
    entry = {
        "model": args.model, "method": args.method, "budget": args.budget, "params": params,
        "pareto_points": args.pareto_points, "wall_s": round(wall, 1),
        "stage_s": {k: round(v, 1) for k, v in result.timings.items()},
        "peak_rss_mb_by_stage_end": stages,
        "fp32_model_mb": round(result.summary.full_precision_bytes / 2**20, 1),
        "torch_threads": __import__("torch").get_num_threads(),
        "load_average": os.getloadavg(),
        "avg_bits": result.summary.avg_bits,
        "quality": {"metric": q.metric, "full_precision": q.full_precision,
                    "allocation": q.allocation, "uniform_bits": q.uniform_bits, "uniform": q.uniform},
        "sensitivity": {k: result.sensitivity.get(k) for k in ("engine", "backward_passes", "seconds",
                                                               "max_rel_error")},
    }
    print(json.dumps(entry, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    saved[" ".join([args.model, args.method, args.budget, *args.param])] = entry
    RESULTS.write_text(json.dumps(saved, indent=2) + "\n")


if __name__ == "__main__":
    main()
