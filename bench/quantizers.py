"""The quantizer comparison of `bench/quality.py --quantizer rtn gptq adaquant`.

Per model, for each quantizer q (the job's `quant.algorithm`):

- the GPTQ/AdaQuant pass over every layer and width from full-precision inputs
  (what a table needs), timed, with the peak of the process's resident memory above
  what it held before the pass;
- the `fisher` table under q (the default method; its ΔW_l(b) are q's), through the
  table cache;
- uniform widths 2–5 applied with q (sequential, as evaluation and artifact do);
- at each average-bits budget: the uniform width below it, the allocation chosen
  under q's table and applied with q (`own`), and the allocation chosen under the
  RTN table applied with q (`rtn_allocation`: the same bits, another quantizer).

Results go to bench/results/quantizers.json (updated per model); the tables are
rendered by bench/quantizer_report.py into docs/results.md and docs/benchmarks.md.
"""

from __future__ import annotations

import os
import threading
import time

import torch

from kernels.scheme import ACTIVATION_BITS, QuantScheme, bits_per_weight
from sensitivity.engine import compute_table
from sensitivity.layers import discover_layers
from sensitivity.models import load_model
from sensitivity.quantized import QuantizedWeights
from solver import solve
from workers.evaluate import measure
from workers.problem import build_problem, candidate_choices
from workers.spec import JobSpec

BUDGETS = (2.5, 3.0, 3.5, 4.0)
UNIFORM_BITS = (2, 3, 4, 5)
METHOD, METHOD_PARAMS = "fisher", {"tol": 0.1, "max_probes": 30}


class PeakRSS:
    """The largest resident set size seen while the block runs (sampled every 20 ms)."""

    def __init__(self):
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def above_start_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def spec_for(model: str, budget: float) -> JobSpec:
    return JobSpec(model=model, budgets={"avg_bits": budget}, pareto_points=0)


def run_model(name: str, quantizers: list[str], log) -> dict:
    t0 = time.perf_counter()
    bundle = load_model(name)
    layers = [layer for layer in discover_layers(bundle) if layer.used]
    names = [layer.name for layer in layers]
    metric = bundle.headline
    choices = candidate_choices(spec_for(name, BUDGETS[0]))
    widths = sorted({c[0] for c in choices if c[0] < 16})
    full = bundle.evaluate(bundle.model)
    log(f"{name}: {len(layers)} layers, full precision {metric.name} {full[metric.name]:.3f}")
    out: dict = {"metric": metric.name, "direction": metric.direction, "full_precision": full,
                 "layers": len(layers), "params": sum(layer.params for layer in layers),
                 "threads": torch.get_num_threads(), "quantizers": {}, "budgets": {}}
    schemes, providers, tables = {}, {}, {}
    for q in quantizers:
        scheme = QuantScheme(algorithm=q)
        weights = QuantizedWeights(bundle, scheme)
        entry: dict = {"settings": scheme.as_dict()}
        if scheme.calibrated:
            with PeakRSS() as mem:
                start = time.perf_counter()
                weights.prepare(names, widths)
                entry["pass_s"] = time.perf_counter() - start
            entry["pass_peak_mb"] = mem.above_start_mb
            entry["pass_seconds"] = dict(weights.seconds)
            entry["rtn_layers"] = weights.rtn_notes()
            log(f"  {q}: pass over {len(names)} layers × {len(widths)} widths in {entry['pass_s']:.1f}s, "
                f"peak +{entry['pass_peak_mb']:.0f} MB")
        start = time.perf_counter()
        table = compute_table(METHOD, bundle, layers, choices, scheme, METHOD_PARAMS, weights=weights)
        entry["table_s"], entry["table_cache"] = time.perf_counter() - start, table.meta.get("cache")
        uniform = {}
        for bits in UNIFORM_BITS:
            start = time.perf_counter()
            quality = measure(bundle, {n: (bits, ACTIVATION_BITS) for n in names}, scheme, weights)
            uniform[str(bits)] = {"quality": quality, "apply_s": time.perf_counter() - start,
                                  "avg_bits": _avg_bits(layers, bits, scheme)}
            log(f"  {q}: uniform {bits}-bit {metric.name} {quality[metric.name]:.3f}")
        entry["uniform"] = uniform
        out["quantizers"][q] = entry
        schemes[q], providers[q], tables[q] = scheme, weights, table
    for budget in BUDGETS:
        spec = spec_for(name, budget)
        allocations = {}
        for q in quantizers:
            problem = build_problem(spec, bundle, layers, tables[q].omega, schemes[q], tables[q].pairs)
            allocations[q] = solve(problem)
        row = {}
        for q in quantizers:
            below = [b for b in UNIFORM_BITS if out["quantizers"][q]["uniform"][str(b)]["avg_bits"] <= budget]
            u = str(below[-1] if below else UNIFORM_BITS[0])
            own = allocations[q]
            row[q] = {
                "uniform_bits": int(u), "uniform": out["quantizers"][q]["uniform"][u]["quality"],
                "avg_bits": own.budget_use["avg_bits"][0],
                "bits": {n: c[0] for n, c in own.choices.items()},
                "own": measure(bundle, dict(own.choices), schemes[q], providers[q]),
            }
            if q != "rtn" and "rtn" in allocations:
                row[q]["rtn_allocation"] = measure(bundle, dict(allocations["rtn"].choices), schemes[q],
                                                   providers[q])
        out["budgets"][str(budget)] = row
        log(f"  {budget} bits: " + ", ".join(
            f"{q} uniform {r['uniform'][metric.name]:.3f} own {r['own'][metric.name]:.3f}"
            + (f" rtn-alloc {r['rtn_allocation'][metric.name]:.3f}" if "rtn_allocation" in r else "")
            for q, r in row.items()))
    for q in quantizers:
        out["quantizers"][q]["seconds"] = dict(providers[q].seconds)
    out["seconds"] = time.perf_counter() - t0
    return out


def _avg_bits(layers, bits: int, scheme: QuantScheme) -> float:
    params = sum(layer.params for layer in layers)
    return sum(layer.params * bits_per_weight(layer.shape, scheme.config(bits)) for layer in layers) / params
