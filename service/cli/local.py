"""The local commands: `run` (the whole pipeline in this process, no service)
and `latency` (time every layer with our kernels). The pipeline, and torch with
it, is imported only inside the commands, so the rest of the CLI stays light."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kernels.export.formats import EXPORT_FORMATS
from kernels.scheme import ACTIVATION_MODES, ACTIVATION_RANGES
from sensitivity.catalog import model_names
from sensitivity.data.formats import data_format
from service.cli import exit_codes
from service.cli.args import (
    UsageError,
    add_quantizer_option,
    one_line,
    parse_allowed,
    parse_bits_list,
    parse_budgets,
    parse_params,
    parse_pins,
    read_json,
)
from service.cli.progress import ProgressPrinter
from service.cli.report import print_frontier, print_report


def build_spec(args: argparse.Namespace):
    from pydantic import ValidationError

    from workers.spec import JobSpec

    spec = {
        "model": args.model,
        "method": args.method,
        "method_params": parse_params(args.param),
        "budgets": parse_budgets(args.budget),
        # group size and symmetry only when given: an export format picks its own otherwise
        "quant": {**({"group_size": args.group_size} if args.group_size is not None else {}),
                  **({"symmetric": True} if args.symmetric else {}),
                  "mse_clip": args.mse_clip, "algorithm": args.quantizer,
                  **({"damping": args.damping} if args.damping is not None else {}),
                  **({"act_order": True} if args.act_order else {})},
        "overrides": {"pins": parse_pins(args.pin), "allowed": parse_allowed(args.allow),
                      "exclude": args.exclude},
        "seed": args.seed,
    }
    if args.export:
        spec["export"] = args.export[0]
    if args.bits:
        spec["weight_bits"] = parse_bits_list(args.bits, "--bits")
    if args.activation_bits:  # the inputs' widths, and how they are quantized
        spec["activation_bits"] = parse_bits_list(args.activation_bits, "--activation-bits")
    act = {k: v for k, v in (("mode", args.activation_mode), ("range", args.activation_range)) if v}
    if args.activation_symmetric:
        act["symmetric"] = True
    if act:
        spec["quant"]["activation"] = act
    if args.latency_table:
        spec["latency_table"] = read_json(args.latency_table, "--latency-table")
    if args.min_quality_drop is not None:
        spec["min_quality_drop"] = args.min_quality_drop
    try:
        return JobSpec.model_validate(spec)
    except ValidationError as exc:
        raise UsageError(one_line(exc)) from None


def local_uploads(args: argparse.Namespace, model: str):
    """(model source, data source) for `run --weights / --model-dir / --data`."""
    from sensitivity.sources import DataSource, ModelSource

    model_source = data_source = None
    if args.gguf:
        from sensitivity.data.gguf_header import read_gguf_header

        try:
            header = read_gguf_header(Path(args.gguf))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--gguf: {args.gguf}: {exc}") from None
        model_source = ModelSource(model, "gguf", header.architecture, Path(args.gguf))
    elif args.model_dir:
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
        fmt = data_format(Path(args.data).name)
        if fmt is None or not Path(args.data).is_file():
            raise UsageError(f"--data: expected a .safetensors, .txt or .jsonl file, got {args.data}")
        data_source = DataSource(Path(args.data).name, fmt, Path(args.data))
    return model_source, data_source


def cmd_run(args: argparse.Namespace) -> int:
    if sum(bool(x) for x in (args.model_dir, args.weights, args.gguf)) > 1:
        raise UsageError("give one of --weights (for a built-in --model), --model-dir or --gguf")
    if args.export and args.artifact:
        raise UsageError("give --artifact DIR (bitalloc's packed model) or --export FORMAT DIR")
    if not args.model and not args.model_dir and not args.gguf:
        raise UsageError("give --model (a built-in model), --model-dir or --gguf")
    args.model = args.model or (Path(args.gguf).stem if args.gguf else
                                Path(args.model_dir).resolve().name)
    spec = build_spec(args)  # the method and its parameters are checked here, before any loading
    from workers.pipeline import JobError, run_job

    model_source, data_source = local_uploads(args, spec.model)
    artifact = args.export[1] if args.export else args.artifact
    try:
        result = run_job(spec, ProgressPrinter(), artifact_dir=artifact,
                         model_source=model_source, data_source=data_source)
    except (JobError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.FAILED
    print_report(result)
    if args.pareto:
        print_frontier(result)
    if args.json:
        Path(args.json).write_text(result.model_dump_json(indent=2))
        print(f"\nresult written to {args.json}")
    if args.artifact:
        print(f"packed model written to {args.artifact} (model.safetensors, allocation.json)")
    elif args.export:
        print(f"{spec.export} export written to {artifact}")
    return exit_codes.OK


def cmd_latency(args: argparse.Namespace) -> int:
    from workers.latency import model_latency_table

    if args.model not in model_names():
        raise UsageError(f"unknown model {args.model!r}; built-in models: {', '.join(model_names())}")
    widths = parse_bits_list(args.bits, "--bits")
    table = model_latency_table(args.model, widths, rows=args.rows, device=args.device,
                                group_size=args.group_size)
    Path(args.output).write_text(json.dumps(table, indent=2))
    print(f"latency table for {len(table)} layers × {len(widths)} widths written to {args.output}")
    return exit_codes.OK


def add_local_commands(sub) -> None:
    run = sub.add_parser("run", help="run the whole pipeline locally, no service")
    run.add_argument("--model", help=f"built-in model: {', '.join(model_names())} (with "
                                     "--model-dir or --gguf: a name for that model)")
    run.add_argument("--weights", metavar="FILE",
                     help="a safetensors state dict for the --model architecture")
    run.add_argument("--model-dir", metavar="DIR",
                     help="a Hugging Face model folder (config.json, *.safetensors, tokenizer)")
    run.add_argument("--gguf", metavar="FILE",
                     help="a GGUF causal language model (dequantized to fp32 when loaded)")
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
    run.add_argument("--activation-bits", metavar="A1,A2",
                     help="activation widths of the layers' inputs, e.g. 4,8,16 (default 16: "
                          "not quantized; hawq_v2, fisher or empirical)")
    run.add_argument("--activation-mode", choices=ACTIVATION_MODES,
                     help="static per-tensor ranges (default) or dynamic per-token ranges")
    run.add_argument("--activation-range", choices=ACTIVATION_RANGES,
                     help="static ranges: minmax (default), percentile or mse clipping")
    run.add_argument("--activation-symmetric", action="store_true", help="symmetric activation codes")
    run.add_argument("--pin", action="append", default=[], metavar="LAYER=BITS")
    run.add_argument("--allow", action="append", default=[], metavar="LAYER=B1/B2")
    run.add_argument("--exclude", action="append", default=[], metavar="LAYER",
                     help="leave this layer in 16-bit")
    run.add_argument("--group-size", type=int, default=None,
                     help="weights per scale along the inputs (default 128; an export format "
                          "that needs whole groups picks a smaller one that fits)")
    run.add_argument("--symmetric", action="store_true")
    run.add_argument("--mse-clip", action="store_true", help="MSE-optimal clipping")
    add_quantizer_option(run)
    run.add_argument("--damping", type=float,
                     help="gptq/adaquant: Hessian damping, a fraction of its mean diagonal "
                          "(default 0.01)")
    run.add_argument("--act-order", action="store_true",
                     help="gptq/adaquant: quantize columns by decreasing input energy")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--json", metavar="PATH", help="write the result as JSON")
    run.add_argument("--artifact", metavar="DIR", help="write the packed mixed-precision model here")
    run.add_argument("--export", nargs=2, metavar=("FORMAT", "DIR"),
                     help=f"write the quantized model in FORMAT ({', '.join(EXPORT_FORMATS)}) to DIR")
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
