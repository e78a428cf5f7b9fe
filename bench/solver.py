"""Solver benchmark: solve time vs layers, with and without pair terms, and a Pareto sweep.

Synthetic but realistic inputs: params log-uniform in [1e4, 1e7], Hessian traces
log-normal (σ = 1.5), Ω = trace · params · 2^(-2b) (the error of a b-bit uniform
quantizer), 7 weight widths {2, 3, 4, 5, 6, 8, 16} with scale overhead in the bits
per weight, and three budgets at once (avg_bits, size_bytes, bops). Pair terms:
window 2, P_ij(b_i, b_j) = ρ · sqrt(Ω_i(b_i) Ω_j(b_j)) with ρ uniform in ±0.2.

    .venv/bin/python bench/solver.py            # prints a table, writes bench/results/solver.json
    .venv/bin/python bench/solver.py --previous OLD.json   # adds ratios against an earlier run

Two more rows on ``--sweep-layers`` layers: window 3 (pairs (i, i+1), (i, i+2), (i, i+3),
343 states in the pair-chain dynamic program), and a watchdog check: pairs (i, i+1) and
(i, i+4) (window 4, 2,401 states: outside the dynamic program, so the integer program
runs) under ``--limit-check`` seconds; that solve must come back within the limit plus
the watchdog's grace.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# this file is named like the package it measures: run as a script, its own folder
# would shadow ``solver``, so import from the repository root instead
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402
import pulp  # noqa: E402

from solver.ilp import solve  # noqa: E402
from solver.milp import backend_available  # noqa: E402
from solver.pareto import pareto  # noqa: E402
from solver.problem import Budget, Layer, Option, PairTerm, Problem  # noqa: E402

BITS = (2, 3, 4, 5, 6, 8, 16)
RESULTS = Path(__file__).resolve().parent / "results" / "solver.json"


def bits_per_weight(bits: int, group: int = 128) -> float:
    """b + (fp16 scale + b-bit zero) / g; 16-bit weights carry no overhead."""
    return bits + (16 + bits) / group if bits < 16 else 16.0


def synthetic(n: int, *, pairs: bool, seed: int = 0, offsets: tuple[int, ...] = (1, 2)) -> Problem:
    rng = np.random.default_rng(seed)
    params = np.exp(rng.uniform(np.log(1e4), np.log(1e7), n)).astype(int)
    trace = np.exp(rng.normal(0.0, 1.5, n))
    macs = params * np.exp(rng.uniform(0.0, np.log(200.0), n))
    bpw = np.array([bits_per_weight(b) for b in BITS])
    omega = trace[:, None] * params[:, None] * 2.0 ** (-2.0 * np.array(BITS))[None, :]
    layers = [
        Layer(
            f"layer{i}",
            int(params[i]),
            {
                (b, 16): Option(
                    float(omega[i, j]),
                    {
                        "avg_bits": float(params[i] * bpw[j]),
                        "size_bytes": float(params[i] * bpw[j] / 8),
                        "bops": float(macs[i] * b * 16),
                    },
                )
                for j, b in enumerate(BITS)
            },
        )
        for i in range(n)
    ]
    terms = []
    if pairs:
        for i in range(n):
            for j in (i + offset for offset in offsets):
                if j < n:
                    rho = rng.uniform(-0.2, 0.2)
                    values = rho * np.sqrt(np.outer(omega[i], omega[j]))
                    terms.append(
                        PairTerm(
                            f"layer{i}",
                            f"layer{j}",
                            {
                                ((a, 16), (b, 16)): float(values[x, y])
                                for x, a in enumerate(BITS)
                                for y, b in enumerate(BITS)
                            },
                        )
                    )
    fixed = float(params.sum() * 0.05 * 2)  # unquantized tensors: 5% as many values, fp16
    total = float(params.sum())
    bops_low = float((macs * 2 * 16).sum())
    bops_high = float((macs * 16 * 16).sum())
    budgets = [
        Budget("avg_bits", 4.5),
        Budget("size_bytes", fixed + total * bits_per_weight(5) / 8),
        Budget("bops", bops_low + 0.3 * (bops_high - bops_low)),
    ]
    return Problem(layers, budgets, fixed_costs={"size_bytes": fixed}, pairs=terms)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the CBC runs): a figure the
    other jobs on a shared machine disturb less than wall time."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "pulp": pulp.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--backends", nargs="+", default=["cbc", "highs"])
    parser.add_argument("--time-limit", type=float, default=60.0, help="per solve, seconds")
    parser.add_argument("--sweep-layers", type=int, default=1000)
    parser.add_argument("--sweep-points", type=int, default=64)
    parser.add_argument("--limit-check", type=float, default=5.0, help="seconds; 0 to skip")
    parser.add_argument("--previous", type=Path, help="an earlier results JSON: print ratios against it")
    args = parser.parse_args()
    backends = [b for b in args.backends if backend_available(b)]
    previous = json.loads(args.previous.read_text()) if args.previous else None
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    rows = []
    print(
        f"{'layers':>6} {'pairs':>5} {'backend':>7} {'status':>9} {'proof':>6} {'gap':>9} "
        f"{'seconds':>8} {'cpu_s':>8}"
    )
    for n in args.sizes:
        for with_pairs in (False, True):
            problem = synthetic(n, pairs=with_pairs)
            for backend in backends:
                cpu = cpu_seconds()
                allocation = solve(problem, backend=backend, time_limit_s=args.time_limit)
                cpu = cpu_seconds() - cpu
                row = {
                    "layers": n,
                    "choices": len(BITS),
                    "budgets": [b.kind for b in problem.budgets],
                    "pairs": len(problem.pairs),
                    "backend": backend,
                    "status": allocation.status,
                    "certificate": allocation.certificate,
                    "gap": allocation.gap,
                    "objective": allocation.objective,
                    "seconds": round(allocation.solve_time_s, 3),
                    "cpu_seconds": round(cpu, 3),
                }
                before = _previous_row(previous, row)
                if before:
                    row["previous_seconds"] = before["seconds"]
                    row["previous_cpu_seconds"] = before["cpu_seconds"]
                rows.append(row)
                gap = f"{row['gap']:.1e}" if row["gap"] is not None else "-"
                ratio = (
                    f"  (was {before['seconds']:.3f} s, {before['cpu_seconds']:.3f} CPU s: "
                    f"{before['seconds'] / max(row['seconds'], 1e-9):.1f}x, "
                    f"{before['cpu_seconds'] / max(cpu, 1e-9):.1f}x)"
                    if before
                    else ""
                )
                print(
                    f"{n:>6} {row['pairs']:>5} {backend:>7} {row['status']:>9} "
                    f"{row['certificate'] or '-':>6} {gap:>9} {row['seconds']:>8.3f} {cpu:>8.3f}{ratio}",
                    flush=True,
                )

    problem = synthetic(args.sweep_layers, pairs=False)
    start, cpu = time.perf_counter(), cpu_seconds()
    points = pareto(problem, "size_bytes", points=args.sweep_points)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    sweep = {
        "layers": args.sweep_layers,
        "points_requested": args.sweep_points,
        "frontier_points": len(points),
        "optimal_points": sum(p.status == "optimal" for p in points),
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
    }
    print(
        f"pareto sweep: {sweep['points_requested']} limits on {sweep['layers']} layers -> "
        f"{sweep['frontier_points']} frontier points ({sweep['optimal_points']} optimal) in {seconds:.2f} s "
        f"({cpu:.2f} s CPU)",
        flush=True,
    )
    if previous and previous.get("pareto"):
        before = previous["pareto"]
        sweep["previous_seconds"], sweep["previous_cpu_seconds"] = before["seconds"], before["cpu_seconds"]
        print(
            f"  (was {before['seconds']:.2f} s, {before['cpu_seconds']:.2f} CPU s: "
            f"{before['seconds'] / seconds:.1f}x, {before['cpu_seconds'] / max(cpu, 1e-9):.1f}x)"
        )

    problem = synthetic(args.sweep_layers, pairs=True, offsets=(1, 2, 3))
    cpu = cpu_seconds()
    allocation = solve(problem, time_limit_s=args.time_limit)
    cpu = cpu_seconds() - cpu
    window3 = {
        "layers": args.sweep_layers,
        "pairs": len(problem.pairs),
        "offsets": [1, 2, 3],
        "status": allocation.status,
        "objective": allocation.objective,
        "certificate": allocation.certificate,
        "gap": allocation.gap,
        "seconds": round(allocation.solve_time_s, 3),
        "cpu_seconds": round(cpu, 3),
    }
    gap = f"{allocation.gap:.1e}" if allocation.gap is not None else "-"
    print(
        f"window 3: {args.sweep_layers} layers, {len(problem.pairs)} pairs (i, i+1..3): {allocation.status} "
        f"({allocation.certificate or '-'}), gap {gap}, {allocation.solve_time_s:.2f} s ({cpu:.2f} s CPU)",
        flush=True,
    )

    limit_check = None
    if args.limit_check > 0:
        problem = synthetic(args.sweep_layers, pairs=True, offsets=(1, 4))
        start = time.perf_counter()
        allocation = solve(problem, time_limit_s=args.limit_check)
        seconds = time.perf_counter() - start
        limit_check = {
            "layers": args.sweep_layers,
            "pairs": len(problem.pairs),
            "offsets": [1, 4],
            "time_limit_s": args.limit_check,
            "status": allocation.status,
            "objective": allocation.objective,
            "gap": allocation.gap,
            "seconds": round(seconds, 3),
        }
        gap = f"{allocation.gap:.1e}" if allocation.gap is not None else "-"
        print(
            f"time limit check: {args.sweep_layers} layers, pairs (i, i+1), (i, i+4), "
            f"time_limit_s={args.limit_check:g}: {allocation.status}, gap {gap}, {seconds:.2f} s"
        )

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    RESULTS.write_text(
        json.dumps(
            {
                "machine": {**machine(), "load_avg_1min": load, "load_avg_1min_start": load_start},
                "solve": rows,
                "pareto": sweep,
                "window3": window3,
                "limit_check": limit_check,
            },
            indent=2,
        )
    )
    print(f"load average (1 min): {load_start} at the start, {load} at the end")
    print(f"wrote {RESULTS}")


def _previous_row(previous: dict | None, row: dict) -> dict | None:
    if not previous:
        return None
    return next(
        (
            r
            for r in previous.get("solve", [])
            if (r["layers"], r["pairs"], r["backend"]) == (row["layers"], row["pairs"], row["backend"])
        ),
        None,
    )


if __name__ == "__main__":
    main()
