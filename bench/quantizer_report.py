"""From bench/results/quantizers.json to the quantizer sections of docs/results.md
and docs/benchmarks.md (each between its markers, so the rest of those pages, and
bench/quality_report.py's rendering of results.md, keep their own content)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_MD = ROOT / "docs" / "results.md"
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- quantizers:begin -->", "<!-- quantizers:end -->"
COMMAND = "bench/quality.py --quantizer rtn gptq adaquant --models {models}"


def fmt(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _drop(model: dict, value: float) -> float:
    fp = model["full_precision"][model["metric"]]
    return value - fp if model["direction"] == "lower" else fp - value


def results_section(results: dict) -> str:
    models = results["models"]
    lines = [BEGIN, "## Quantizers: RTN, GPTQ, AdaQuant", "",
             f"`{COMMAND.format(models=' '.join(models))}` on {results['machine']}; "
             "the `fisher` table of each quantizer (its ΔW_l(b)), uniform widths and allocations "
             "applied with that quantizer (sequential: each layer quantized from the inputs of the "
             "model with the earlier layers already at their widths), group size 128, asymmetric, "
             "GPTQ damping 0.01, AdaQuant 100 steps of lr 0.01 from GPTQ's codes. "
             "`own`: the allocation chosen under the quantizer's own table; `rtn alloc`: the "
             "allocation chosen under the RTN table, quantized with this quantizer.", ""]
    for name, model in models.items():
        metric, direction = model["metric"], model["direction"]
        qs = list(model["quantizers"])
        lines += [f"### {name}", "",
                  f"{metric} ({direction} is better), full precision "
                  f"{model['full_precision'][metric]:.3f}.", "",
                  "| avg bits | " + " | ".join(f"{q} uniform | {q} own" + (" | " + q + " rtn alloc"
                                                                             if q != "rtn" else "")
                                               for q in qs) + " |",
                  "| --: | " + " | ".join("--: | --:" + (" | --:" if q != "rtn" else "") for q in qs) + " |"]
        for budget, row in model["budgets"].items():
            cells = []
            for q in qs:
                r = row[q]
                cells.append(f"{fmt(r['uniform'][metric])} ({r['uniform_bits']}-bit)")
                cells.append(fmt(r["own"][metric]))
                if q != "rtn":
                    cells.append(fmt(r.get("rtn_allocation", {}).get(metric)))
            lines.append(f"| {budget} | " + " | ".join(cells) + " |")
        widths = list(model["quantizers"][qs[0]]["uniform"])
        lines += ["", "Uniform widths (all layers at one width, each quantizer):", "",
                  "| quantizer | " + " | ".join(f"{b}-bit" for b in widths) + " |",
                  "| --- | " + " | ".join("--:" for _ in widths) + " |"]
        for q in qs:
            u = model["quantizers"][q]["uniform"]
            lines.append(f"| {q} | " + " | ".join(fmt(v["quality"][metric], 3) for v in u.values()) + " |")
        lines += _recovery(model, qs), ""
    lines.append(END)
    return "\n".join(lines)


def _recovery(model: dict, qs: list[str]) -> str:
    """How much of RTN's quality drop GPTQ recovers at 3 bits on the same allocation."""
    row = model["budgets"].get("3.0")
    if row is None or "rtn" not in row:
        return ""
    metric = model["metric"]
    rtn = _drop(model, row["rtn"]["own"][metric])
    parts = []
    for q in qs:
        if q == "rtn" or "rtn_allocation" not in row[q]:
            continue
        same = _drop(model, row[q]["rtn_allocation"][metric])
        share = (rtn - same) / rtn * 100 if rtn > 0 else float("nan")
        parts.append(f"{q} on RTN's 3-bit allocation: drop {same:.3f} against RTN's {rtn:.3f} "
                     f"({share:.0f} % of RTN's drop recovered); {q}'s own allocation: drop "
                     f"{_drop(model, row[q]['own'][metric]):.3f}")
    return ("\n" + "; ".join(parts) + ".") if parts else ""


def benchmarks_section(results: dict) -> str:
    lines = [BEGIN, "## Quantizers: the GPTQ / AdaQuant pass", "",
             f"`{COMMAND.format(models=' '.join(results['models']))}` on {results['machine']}. "
             "The pass over every layer and every width 2–8 from full-precision inputs (what a "
             "sensitivity table needs): collecting the inputs' XᵀX, then one GPTQ (and AdaQuant) run per "
             "layer and width; peak memory is the process's resident set above what it held before the "
             "pass (sampled every 20 ms). An applied allocation (evaluation, artifact) quantizes "
             "sequentially: the mean time of one is in the last column.", "",
             "| model | quantizer | layers × widths | inputs s | layers s | pass s | peak MB | "
             "applied s (mean) |",
             "| --- | --- | --: | --: | --: | --: | --: | --: |"]
    for name, model in results["models"].items():
        for q, entry in model["quantizers"].items():
            if "pass_s" not in entry:
                continue
            sec = entry["pass_seconds"]
            applies = [u["apply_s"] for u in entry["uniform"].values()]
            lines.append(f"| {name} | {q} | {model['layers']} × 6 | {sec['hessians']:.1f} | "
                         f"{sec['layers']:.1f} | {entry['pass_s']:.1f} | {entry['pass_peak_mb']:.0f} | "
                         f"{sum(applies) / len(applies):.1f} |")
    lines.append(END)
    return "\n".join(lines)


def replace_block(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    path.write_text(text.rstrip("\n") + "\n")


def keep_block(old: str, new: str) -> str:
    """`new` with the quantizer block of `old` appended (for bench/quality_report.py)."""
    match = re.search(re.escape(BEGIN) + ".*?" + re.escape(END), old, re.S)
    return new if match is None else new.rstrip("\n") + "\n\n" + match.group(0) + "\n"


def render(results: dict) -> None:
    replace_block(RESULTS_MD, results_section(results))
    replace_block(BENCHMARKS_MD, benchmarks_section(results))
