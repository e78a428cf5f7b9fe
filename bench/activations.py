"""Activation bits on digits-cnn, digits-vit and minilm (issue #17): uniform W8A8 / W4A8 / W8A4 / W4A4
(and the weight-only W8A16 / W4A16) under each activation range method, against the mixed (w, a)
allocation the `fisher` table gives at the same BOPs as each uniform point.

Measured: the bundle's own evaluation of the fake-quantized model (weights by the job's
quantizer, inputs by forward pre-hooks with ranges calibrated on the calibration set).

    .venv/bin/python bench/activations.py [--models digits-cnn digits-vit minilm] [--ranges minmax dynamic]
        # bench/results/activations.json
    .venv/bin/python bench/quality.py --activations  # the same
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kernels.scheme import ActivationScheme, QuantScheme  # noqa: E402
from sensitivity.engine import compute_table  # noqa: E402
from sensitivity.layers import discover_layers  # noqa: E402
from sensitivity.models import load_model  # noqa: E402
from sensitivity.quantized import QuantizedWeights  # noqa: E402
from solver import solve  # noqa: E402
from workers.accounting import totals  # noqa: E402
from workers.evaluate import measure  # noqa: E402
from workers.problem import build_problem, candidate_choices  # noqa: E402
from workers.spec import JobSpec  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "activations.json"
MODELS = ("digits-cnn", "digits-vit", "minilm")
UNIFORM = [(8, 16), (4, 16), (8, 8), (4, 8), (8, 4), (4, 4)]
RANGES = {
    "minmax": ActivationScheme(),
    "percentile": ActivationScheme(range="percentile", percentile=99.99),
    "mse": ActivationScheme(range="mse"),
    "dynamic": ActivationScheme(mode="dynamic"),
}
FISHER = {"tol": 0.1, "max_probes": 30}
A_BITS = [4, 6, 8, 16]


def run(model: str, log=print, ranges=tuple(RANGES)) -> dict:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    bundle = load_model(model)
    layers = [layer for layer in discover_layers(bundle) if layer.used]
    full = bundle.evaluate(bundle.model)
    metric = bundle.headline.name
    out = {"model": model, "full_precision": full, "metric": metric, "ranges": {}}
    for label, act in ((k, RANGES[k]) for k in ranges):
        scheme = QuantScheme(activation=act)
        weights = QuantizedWeights(bundle, scheme)
        rows = []
        for w, a in UNIFORM:
            choices = {layer.name: (w, a if not layer.kind == "embedding" else 16) for layer in layers}
            t = totals(layers, choices, scheme, 0.0)
            quality = measure(bundle, choices, scheme, weights)
            rows.append({"label": f"uniform W{w}A{a}", "w_bits": w, "a_bits": a, "bops": t.bops,
                         "avg_bits": t.avg_bits, "quality": quality})
            log(f"{model} {label:<10} uniform W{w}A{a}: {metric} {quality[metric]:.2f}, "
                f"loss {quality.get('test_loss', float('nan')):.4f}, BOPs {t.bops:.4g}")
        spec0 = JobSpec.model_validate({"model": model, "method": "fisher", "method_params": FISHER,
                                        "budgets": {"bops": 1.0}, "activation_bits": A_BITS,
                                        "quant": {"activation": {"mode": act.mode, "range": act.range,
                                                                 "percentile": act.percentile}}})
        t1 = time.perf_counter()
        table = compute_table("fisher", bundle, layers, candidate_choices(spec0), scheme, FISHER,
                              weights=weights)
        sens_s = time.perf_counter() - t1
        for row in [r for r in rows if r["a_bits"] < 16]:
            spec = spec0.model_copy(update={"budgets": {"bops": row["bops"]}})
            allocation = solve(build_problem(spec, bundle, layers, table.omega, scheme))
            choices = dict(allocation.choices)
            quality = measure(bundle, choices, scheme, weights)
            t = totals(layers, choices, scheme, 0.0)
            row["mixed"] = {"quality": quality, "bops": t.bops, "avg_bits": t.avg_bits,
                            "choices": {n: f"w{c[0]}a{c[1]}" for n, c in choices.items()},
                            "predicted_omega": allocation.objective}
            log(f"{model} {label:<10} mixed at W{row['w_bits']}A{row['a_bits']} BOPs: {metric} "
                f"{quality[metric]:.2f}, loss {quality.get('test_loss', float('nan')):.4f}; "
                + " ".join(f"{c[0]}/{c[1]}" for c in choices.values()))
        out["ranges"][label] = {"settings": act.as_dict(), "rows": rows, "sensitivity_s": sens_s,
                                "cache": table.meta.get("cache")}
    out["seconds"] = time.perf_counter() - t0
    out["machine"] = f"{platform.platform()}, 1 torch thread"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--ranges", nargs="+", choices=list(RANGES), default=list(RANGES),
                    help="activation range methods (default: all)")
    args = ap.parse_args(argv)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.setdefault("models", {})
    for model in args.models:
        results["models"][model] = run(model, ranges=args.ranges)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1))
        print(f"{model} done in {results['models'][model]['seconds']:.0f}s; wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
