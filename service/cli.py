"""`bitalloc`: the command line. `run` runs the whole pipeline locally."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from service.cli_pipeline import add_pipeline_commands
from service.cli_service import add_service_commands
from service.progress_bar import ProgressPrinter

EXIT_JOB_FAILED = 1
EXIT_BAD_REQUEST = 2


class UsageError(Exception):
    """Bad command-line input; the message says what is allowed."""


def parse_budgets(items: list[str]) -> dict[str, float]:
    """`avg_bits=4` or `avg_bits=4,size_mb=1.5` (repeatable) → {kind: limit}."""
    budgets: dict[str, float] = {}
    for item in items:
        for part in filter(None, item.split(",")):
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"malformed budget {part!r}: expected KIND=NUMBER, e.g. avg_bits=4")
            try:
                budgets[key.strip()] = float(value)
            except ValueError:
                raise UsageError(f"budget {key.strip()!r} needs a number, got {value!r}") from None
    return budgets


def parse_assignments(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise UsageError(f"malformed {what} {item!r}: expected LAYER=VALUE")
        out[name] = value
    return out


def parse_bits_list(text: str, what: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",") if b]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {text!r}") from None


def parse_params(items: list[str]) -> dict[str, object]:
    """Method parameters `key=value`, the value read as JSON when it parses (numbers)."""
    params: dict[str, object] = {}
    for key, value in parse_assignments(items, "method parameter").items():
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def build_spec(args: argparse.Namespace):
    from pydantic import ValidationError

    from workers.spec import JobSpec

    spec = {
        "model": args.model,
        "method": args.method,
        "method_params": parse_params(args.param),
        "budgets": parse_budgets(args.budget),
        "quant": {"group_size": args.group_size, "symmetric": args.symmetric,
                  "mse_clip": args.mse_clip},
        "overrides": {
            "pins": {k: parse_bits_list(v, "pin")[0]
                     for k, v in parse_assignments(args.pin, "pin").items()},
            "allowed": {k: parse_bits_list(v.replace("/", ","), "allowed widths")
                        for k, v in parse_assignments(args.allow, "allow").items()},
            "exclude": args.exclude,
        },
        "seed": args.seed,
    }
    if args.bits:
        spec["weight_bits"] = parse_bits_list(args.bits, "--bits")
    if args.latency_table:
        spec["latency_table"] = _read_json(args.latency_table, "--latency-table")
    if args.min_quality_drop is not None:
        spec["min_quality_drop"] = args.min_quality_drop
    try:
        return JobSpec.model_validate(spec)
    except ValidationError as exc:
        raise UsageError(_one_line(exc)) from None


def _read_json(path: str, what: str):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{what}: cannot read JSON from {path}: {exc}") from None


def _one_line(exc) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


DATA_FORMATS = {".safetensors": "safetensors", ".txt": "text", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def local_uploads(args: argparse.Namespace, model: str):
    """(model source, data source) for `run --weights / --model-dir / --data`."""
    from sensitivity.models import model_names
    from sensitivity.sources import DataSource, ModelSource

    model_source = data_source = None
    if args.model_dir:
        folder = Path(args.model_dir)
        try:
            model_type = json.loads((folder / "config.json").read_text()).get("model_type", "")
        except (OSError, json.JSONDecodeError, AttributeError) as exc:
            raise UsageError(f"--model-dir: no readable config.json in {folder}: {exc}") from None
        model_source = ModelSource(model, "hf", str(model_type), folder)
    elif model not in model_names():
        raise UsageError(f"unknown model {model!r}; built-in models: {', '.join(model_names())} "
                         "(or --model-dir for a Hugging Face model folder)")
    elif args.weights:
        if not Path(args.weights).is_file():
            raise UsageError(f"--weights: no file {args.weights}")
        model_source = ModelSource(model, "state_dict", model, Path(args.weights))
    if args.data:
        fmt = DATA_FORMATS.get(Path(args.data).suffix.lower())
        if fmt is None or not Path(args.data).is_file():
            raise UsageError(f"--data: expected a .safetensors, .txt or .jsonl file, got {args.data}")
        data_source = DataSource(Path(args.data).name, fmt, Path(args.data))
    return model_source, data_source


def cmd_run(args: argparse.Namespace) -> int:
    if args.model_dir and args.weights:
        raise UsageError("give --weights (for a built-in --model) or --model-dir, not both")
    if not args.model and not args.model_dir:
        raise UsageError("give --model (a built-in model) or --model-dir")
    args.model = args.model or Path(args.model_dir).resolve().name
    spec = build_spec(args)
    from sensitivity.estimators import method_names
    from workers.pipeline import JobError, run_job

    model_source, data_source = local_uploads(args, spec.model)
    if spec.method not in method_names():
        raise UsageError(f"unknown method {spec.method!r}; methods: {', '.join(method_names())}")
    try:
        result = run_job(spec, ProgressPrinter(), artifact_dir=args.artifact,
                         model_source=model_source, data_source=data_source)
    except (JobError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_JOB_FAILED
    print_report(result)
    if args.pareto:
        print_frontier(result)
    if args.json:
        Path(args.json).write_text(result.model_dump_json(indent=2))
        print(f"\nresult written to {args.json}")
    if args.artifact:
        print(f"packed model written to {args.artifact} (model.safetensors, allocation.json)")
    return 0


def print_report(result) -> None:
    print(f"\n{result.model['name']}: {result.model['description']}")
    print(f"{'layer':<44} {'params':>10} {'bits':>5} {'Ω':>11}  {'trace ± error':<24}")
    for layer in result.layers:
        st = layer.stats
        trace = f"{st['trace']:.4g} ± {st['trace_se']:.2g}" if "trace" in st else ""
        print(f"{layer.name:<44} {layer.params:>10,} {layer.w_bits:>5} {layer.omega:>11.4g}  {trace:<24}")
    if result.unused_layers:
        print(f"unused (left unquantized): {', '.join(result.unused_layers)}")
    s, q = result.summary, result.quality
    print(f"\nsize {s.size_bytes / 1e6:.3f} MB (full precision {s.full_precision_bytes / 1e6:.3f} MB);"
          f" average bits {s.avg_bits:.3f} with overhead, {s.avg_bits_no_overhead:.3f} without")
    for kind, (used, limit) in result.solver.budget_use.items():
        print(f"budget {kind}: {used:.6g} of {limit:.6g}")
    print(f"solver: {result.solver.status}, objective {result.solver.objective:.4g}, "
          f"{result.solver.solve_time_s * 1000:.0f} ms ({result.solver.backend})")
    m = q.metric
    print(f"quality ({m}): full precision {q.full_precision[m]:.3f} | "
          f"uniform {q.uniform_bits}-bit ({q.uniform_size_bytes / 1e6:.3f} MB) {q.uniform[m]:.3f} | "
          f"allocation {q.allocation[m]:.3f}")
    others = [k for k in q.full_precision if k != m]
    for k in others:
        print(f"  {k}: full precision {q.full_precision[k]:.4g} | uniform {q.uniform[k]:.4g} | "
              f"allocation {q.allocation[k]:.4g}")
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))


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


def cmd_latency(args: argparse.Namespace) -> int:
    from sensitivity.models import model_names
    from workers.latency import model_latency_table

    if args.model not in model_names():
        raise UsageError(f"unknown model {args.model!r}; built-in models: {', '.join(model_names())}")
    widths = parse_bits_list(args.bits, "--bits")
    table = model_latency_table(args.model, widths, rows=args.rows, device=args.device,
                                group_size=args.group_size)
    Path(args.output).write_text(json.dumps(table, indent=2))
    print(f"latency table for {len(table)} layers × {len(widths)} widths written to {args.output}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bitalloc", description="Mixed-precision bit allocation.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline locally, no service")
    run.add_argument("--model", help="built-in model: digits-cnn, digits-vit, minilm (with "
                                     "--model-dir: a name for the folder's model)")
    run.add_argument("--weights", metavar="FILE",
                     help="a safetensors state dict for the --model architecture")
    run.add_argument("--model-dir", metavar="DIR",
                     help="a Hugging Face model folder (config.json, *.safetensors, tokenizer)")
    run.add_argument("--data", metavar="FILE",
                     help="calibration data: .safetensors (inputs, optional labels and "
                          "attention_mask), or .txt / .jsonl texts for text models")
    run.add_argument("--budget", action="append", required=True,
                     help="KIND=LIMIT, repeatable: avg_bits, size_bytes, size_mb, bops, latency_ms "
                          "(with --latency-table), max_quality_drop (points of the quality metric)")
    run.add_argument("--method", default="fisher", help="sensitivity method (default fisher)")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="method parameter, e.g. tol=0.05, max_probes=50")
    run.add_argument("--bits", help="candidate weight widths, e.g. 2,3,4,8,16 (default all)")
    run.add_argument("--pin", action="append", default=[], metavar="LAYER=BITS")
    run.add_argument("--allow", action="append", default=[], metavar="LAYER=B1/B2")
    run.add_argument("--exclude", action="append", default=[], metavar="LAYER",
                     help="leave this layer in 16-bit")
    run.add_argument("--group-size", type=int, default=128)
    run.add_argument("--symmetric", action="store_true")
    run.add_argument("--mse-clip", action="store_true", help="MSE-optimal clipping")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--json", metavar="PATH", help="write the result as JSON")
    run.add_argument("--artifact", metavar="DIR", help="write the packed mixed-precision model here")
    run.add_argument("--latency-table", metavar="FILE", help="per-layer latency JSON (bitalloc latency)")
    run.add_argument("--min-quality-drop", type=float,
                     help="lower end of the max_quality_drop range (default half of it)")
    run.add_argument("--pareto", action="store_true", help="print the Pareto frontier")
    run.set_defaults(func=cmd_run)
    lat = sub.add_parser("latency", help="time every layer at every width with our kernels")
    lat.add_argument("--model", required=True)
    lat.add_argument("--bits", default="2,3,4,8,16", help="widths to time (default 2,3,4,8,16)")
    lat.add_argument("--rows", type=int, default=1, help="activation rows (tokens or batch)")
    lat.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    lat.add_argument("--group-size", type=int, default=128)
    lat.add_argument("-o", "--output", required=True, metavar="FILE")
    lat.set_defaults(func=cmd_latency)
    add_service_commands(sub)
    add_pipeline_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_REQUEST


if __name__ == "__main__":
    sys.exit(main())
