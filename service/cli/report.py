"""A job result for people: the per-layer table, size and budgets, the solver,
and the measured quality with each metric's direction (a drop is always the
change for the worse: `result.quality.directions`, where results stored before
directions existed have none and all their metrics are higher-is-better)."""

from __future__ import annotations

from sensitivity.metrics import Metric


def metric(quality, name: str) -> Metric:
    """The metric `name` of a result's quality, with its direction."""
    return Metric(name, quality.directions.get(name, "higher") == "higher")


def _named(m: Metric) -> str:
    return f"{m.name}, {m.direction} is better"


def print_report(result) -> None:
    print(f"\n{result.model['name']}: {result.model['description']}")
    acts = any(layer.a_bits < 16 for layer in result.layers)  # then bits are w/a
    print(f"{'layer':<44} {'params':>10} {'w/a' if acts else 'bits':>5} {'Ω':>11}  {'trace ± error':<24}")
    for layer in result.layers:
        st = layer.stats
        trace = f"{st['trace']:.4g} ± {st['trace_se']:.2g}" if "trace" in st else ""
        bits = f"{layer.w_bits}/{layer.a_bits}" if acts else layer.w_bits
        print(f"{layer.name:<44} {layer.params:>10,} {bits:>5} {layer.omega:>11.4g}  {trace:<24}")
    if result.unused_layers:
        print(f"unused (left unquantized): {', '.join(result.unused_layers)}")
    if result.export_unquantized:
        print(f"left unquantized by export {result.spec.export}: "
              f"{', '.join(result.export_unquantized)}")
    s, q = result.summary, result.quality
    print(f"\nsize {s.size_bytes / 1e6:.3f} MB (full precision {s.full_precision_bytes / 1e6:.3f} MB);"
          f" average bits {s.avg_bits:.3f} with overhead, {s.avg_bits_no_overhead:.3f} without")
    for kind, (used, limit) in result.solver.budget_use.items():
        print(f"budget {kind}: {used:.6g} of {limit:.6g}")
    print(f"solver: {result.solver.status}, objective {result.solver.objective:.4g}, "
          f"{result.solver.solve_time_s * 1000:.0f} ms ({result.solver.backend})")
    quantizer = result.sensitivity.get("quantizer")  # only for gptq / adaquant jobs
    if quantizer:
        rtn = quantizer.get("rtn_layers", {})
        print(f"quantizer: {quantizer['settings']['algorithm']}"
              + (f"; rounded to nearest: {', '.join(rtn)}" if rtn else ""))
    m = metric(q, q.metric)
    fp = q.full_precision[m.name]
    print(f"quality ({_named(m)}): full precision {fp:.3f} | "
          f"uniform {q.uniform_bits}-bit ({q.uniform_size_bytes / 1e6:.3f} MB) {q.uniform[m.name]:.3f} "
          f"(drop {m.drop(fp, q.uniform[m.name]):.3f}) | "
          f"allocation {q.allocation[m.name]:.3f} (drop {m.drop(fp, q.allocation[m.name]):.3f})")
    for k in q.full_precision:
        if k != m.name:
            print(f"  {k} ({metric(q, k).direction} is better): full precision {q.full_precision[k]:.4g} | "
                  f"uniform {q.uniform[k]:.4g} | allocation {q.allocation[k]:.4g}")
    for u in result.uniform_activation_points:  # W8A8, W4A8, ...: uniform inputs too
        print(f"uniform W{u.w_bits}A{u.a_bits}: {q.metric} {u.quality[q.metric]:.4g} at "
              f"{result.frontier_kind} {u.cost:.6g}")
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
    if result.peak_rss_mb:
        print("peak memory: " + ", ".join(f"{k} {v:,.0f} MB" for k, v in result.peak_rss_mb.items()))


def print_frontier(result) -> None:
    kind = result.frontier_kind
    print(f"\nPareto frontier ({kind} vs predicted Σ Ω; * = chosen)")
    print(f"{kind:>14} {'avg bits':>9} {'Σ Ω':>11}")
    for p in result.pareto:
        print(f"{p.cost:>14.6g} {p.avg_bits:>9.3f} {p.objective:>11.4g} {'*' if p.chosen else ''}")
    m = result.quality.metric
    print(f"uniform widths ({m}): " + ", ".join(
        f"{u.w_bits}-bit {u.avg_bits:.2f} b/w {u.quality[m]:.3f}" for u in result.uniform_points))
    if result.quality_search:
        qs = result.quality_search
        print(f"quality-drop search [{qs.min_drop:g}, {qs.max_drop:g}]: {qs.message}")
        for t in qs.trials:
            print(f"  size {t.size_bytes:.0f} B, {t.avg_bits:.3f} b/w: drop {t.drop:.4g}")
