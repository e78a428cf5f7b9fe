"""GPTQ on smollm2-135m with the quantizer's own calibration (issue #15): RTN against
GPTQ, the model as a job quantizes it, GPTQ's layer inputs from the bundle's
`quantizer_calibration` (128 windows of 128 tokens of the prose's calibration half,
`sensitivity.models.causal_lm.QUANTIZER_SEQUENCES`).

Rows, each measured with `workers.evaluate.measure` (perplexity, KL to full precision
and top-1 agreement on the family's 16 held-out windows):

* `uniform`: every quantizable layer at one width (3, 4), groups of 128 and 64 — the
  tied embedding / LM head too, as a job allocates it (under GPTQ it is rounded to
  nearest: a lookup has no inputs to compensate over);
* `fisher`: the allocation a job picks at `avg_bits` 3 and 4 (`fisher`, the job's
  default parameters, under the RTN table at the job's default group size 128),
  applied with RTN and with GPTQ: the same allocation, two quantizers.

`apply_s`: the wall time of applying the allocation (for GPTQ the sequential pass:
the forward passes over the quantizer calibration, collecting XᵀX, and GPTQ per
layer); the evaluation is not in it.

    OMP_NUM_THREADS=1 .venv/bin/python bench/gptq_calibration.py          # every row
    OMP_NUM_THREADS=1 .venv/bin/python bench/gptq_calibration.py --rows uniform --bits 3
    OMP_NUM_THREADS=1 .venv/bin/python bench/gptq_calibration.py --quantizers gptq --sequences 8

`--sequences N`: GPTQ from only the first N windows of the quantizer calibration
(8: the 1,024 tokens the sensitivity methods calibrate on, what GPTQ used before the
quantizer had its own data); such rows are labelled `cN`.
    .venv/bin/python bench/gptq_calibration.py --table

Rows are kept in bench/results/gptq_calibration.json by label; a rerun skips the
labels it has (--force redoes them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kernels.scheme import ACTIVATION_BITS, QuantScheme  # noqa: E402
from sensitivity.engine import compute_table  # noqa: E402
from sensitivity.layers import discover_layers  # noqa: E402
from sensitivity.models import causal_lm, load_model  # noqa: E402
from sensitivity.quantized import QuantizedWeights  # noqa: E402
from solver import solve  # noqa: E402
from workers.evaluate import measure  # noqa: E402
from workers.problem import build_problem, candidate_choices  # noqa: E402
from workers.spec import JobSpec  # noqa: E402

MODEL = "smollm2-135m"
RESULTS = ROOT / "bench" / "results" / "gptq_calibration.json"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": {}}


def save(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True))


def machine() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "commit": commit}


def apply_and_measure(bundle, weights: QuantizedWeights, choices: dict) -> dict:
    before = weights.seconds.get("applied", 0.0)
    start = time.perf_counter()
    quality = measure(bundle, choices, weights.scheme, weights)
    return {"quality": quality, "apply_s": weights.seconds.get("applied", 0.0) - before
            if weights.scheme.calibrated else None, "wall_s": time.perf_counter() - start,
            "load_after": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", default=["uniform", "fisher"], choices=["uniform", "fisher"])
    ap.add_argument("--quantizers", nargs="+", default=["rtn", "gptq"])
    ap.add_argument("--bits", nargs="+", type=int, default=[3, 4], help="uniform widths")
    ap.add_argument("--group-size", nargs="+", type=int, default=[64, 128], help="uniform rows' groups")
    ap.add_argument("--budgets", nargs="+", type=float, default=[3.0, 4.0], help="fisher avg_bits")
    ap.add_argument("--sequences", type=int, default=None,
                    help="only the first N windows of the quantizer calibration")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--table", action="store_true", help="only print the table")
    args = ap.parse_args()
    results = load_results()
    if args.table:
        print(table(results))
        return
    bundle = load_model(MODEL)
    info = bundle.info
    log(f"{MODEL}: quantizer calibration {info['quantizer_calibration_tokens']} tokens "
        f"({info['quantizer_calibration_sequences']} sequences), sensitivity calibration "
        f"{info['calibration_tokens']} tokens")
    tag = ""
    if args.sequences is not None:
        ids = torch.cat([b["input_ids"] for b in bundle.quantizer_batches])[:args.sequences]
        bundle = dataclasses.replace(bundle, quantizer_calibration=causal_lm.chunks(
            {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, causal_lm.QUANTIZER_BATCH))
        tag = f" c{ids.shape[0]}"
        log(f"GPTQ from the first {ids.shape[0]} windows ({ids.numel()} tokens)")
    layers = [layer for layer in discover_layers(bundle) if layer.used]
    names = [layer.name for layer in layers]
    if "full_precision" not in results:
        results["full_precision"] = bundle.evaluate(bundle.model)
    results.update(machine=machine(), quantizer_calibration_tokens=info["quantizer_calibration_tokens"],
                   layers=len(names))
    save(results)
    providers: dict[tuple[str, int], QuantizedWeights] = {}

    def provider(q: str, g: int) -> QuantizedWeights:
        if (q, g) not in providers:
            providers.clear()  # one applied GPTQ model kept at a time
            providers[(q, g)] = QuantizedWeights(bundle, QuantScheme(group_size=g, algorithm=q))
        return providers[(q, g)]

    def run(key: str, q: str, g: int, choices: dict, extra: dict) -> None:
        key += tag if q != "rtn" else ""
        if key in results["rows"] and not args.force:
            log(f"{key}: kept")
            return
        log(f"{key}: running (load {os.getloadavg()[0]:.2f})")
        row = apply_and_measure(bundle, provider(q, g), choices)
        row.update(extra, quantizer=q, group_size=g, load_before=extra.get("load_before"),
                   quantizer_tokens=sum(int(b["attention_mask"].sum()) for b in bundle.quantizer_batches))
        results["rows"][key] = row
        save(results)
        qual = row["quality"]
        log(f"{key}: perplexity {qual['perplexity']:.2f} KL {qual['kl_to_fp']:.3f} top-1 "
            f"{qual['top1_agreement']:.1f} apply {row['apply_s'] or 0:.0f}s wall {row['wall_s']:.0f}s")

    if "uniform" in args.rows:
        for bits in args.bits:
            for g in args.group_size:
                for q in args.quantizers:
                    run(f"uniform w{bits} g{g} {q}", q, g, {n: (bits, ACTIVATION_BITS) for n in names},
                        {"kind": "uniform", "bits": bits, "load_before": os.getloadavg()[0]})
    if "fisher" in args.rows:
        g = QuantScheme().group_size
        spec = JobSpec(model=MODEL, budgets={"avg_bits": args.budgets[0]}, pareto_points=0)
        rtn = QuantScheme(group_size=g)
        start = time.perf_counter()
        table_ = compute_table(spec.method, bundle, layers, candidate_choices(spec), rtn,
                               spec.method_params)
        results["fisher_table"] = {"method": spec.method, "params": spec.method_params,
                                   "seconds": time.perf_counter() - start,
                                   "cache": table_.meta.get("cache")}
        log(f"fisher table (rtn, g{g}) in {results['fisher_table']['seconds']:.0f}s "
            f"(cache: {results['fisher_table']['cache']})")
        for budget in args.budgets:
            spec = JobSpec(model=MODEL, budgets={"avg_bits": budget}, pareto_points=0)
            alloc = solve(build_problem(spec, bundle, layers, table_.omega, rtn, table_.pairs))
            bits = {n: c[0] for n, c in alloc.choices.items()}
            for q in args.quantizers:
                run(f"fisher avg{budget:g} g{g} {q}", q, g, dict(alloc.choices),
                    {"kind": "fisher", "budget": budget, "avg_bits": alloc.budget_use["avg_bits"][0],
                     "bits": bits, "load_before": os.getloadavg()[0]})
    print(table(results))


def table(results: dict) -> str:
    fp = results.get("full_precision", {})
    lines = ["| row | quantizer | perplexity | KL to FP | top-1 agreement % | GPTQ apply s | "
             "load (1 min) | recovered of RTN's perplexity increase |",
             "| --- | --- | --: | --: | --: | --: | --: | --: |"]
    if fp:
        lines.append(f"| full precision | – | {fp['perplexity']:.2f} | 0 | 100 | – | – | – |")
    rows = results.get("rows", {})
    for key, row in sorted(rows.items()):
        q = row["quantizer"]
        qual = row["quality"]
        recovered = "–"
        what = key.split(f" {q}")[0]
        rtn = rows.get(what + " rtn")
        if q != "rtn" and rtn and fp:
            up = rtn["quality"]["perplexity"] - fp["perplexity"]
            recovered = f"{(rtn['quality']['perplexity'] - qual['perplexity']) / up * 100:.0f} %"
        if q != "rtn":
            q += f", {row.get('quantizer_tokens', results.get('quantizer_calibration_tokens'))} tokens"
        if row.get("kind") == "fisher":
            what += f" ({row['avg_bits']:.3f} bits)"
        apply_s = "–" if row.get("apply_s") is None else f"{row['apply_s']:.0f}"
        lines.append(f"| {what} | {q} | {qual['perplexity']:.2f} | {qual['kl_to_fp']:.3f} | "
                     f"{qual['top1_agreement']:.1f} | {apply_s} | {row.get('load_before', 0):.1f} | "
                     f"{recovered} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
