"""The commands that talk to a running service: submit (--wait), status,
result, artifact; upload model|dataset, models, datasets. The server and key
come from `connection.make_client`. --json prints JSON for scripts; --wait
shows a progress bar on a terminal and plain lines otherwise (on stderr).
Client errors are left to `bitalloc`'s main, which maps them to exit statuses
(`exit_codes`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kernels.export.formats import EXPORT_FORMATS
from service.cli import exit_codes
from service.cli.args import (
    UsageError,
    add_quantizer_option,
    parse_bits_list,
    parse_budgets,
    parse_params,
    parse_pins,
    read_json,
)
from service.cli.connection import add_client_options, make_client
from service.cli.progress import ProgressPrinter
from service.cli.report import print_report
from service.job_status import FINISHED


def request_body(args: argparse.Namespace) -> dict:
    """The job request: --spec FILE, then the flags over it."""
    body: dict = read_json(args.spec, "--spec") if args.spec else {}
    for field, value in (("model", args.model), ("method", args.method), ("dataset", args.dataset),
                         ("export", args.export)):
        if value is not None:
            body[field] = value
    if args.budget:
        body["budgets"] = parse_budgets(args.budget)
    if args.param:
        body["method_params"] = {**body.get("method_params", {}), **parse_params(args.param)}
    if args.bits:
        body["weight_bits"] = parse_bits_list(args.bits, "--bits")
    if args.quantizer is not None:
        body["quant"] = {**body.get("quant", {}), "algorithm": args.quantizer}
    overrides = body.setdefault("overrides", {})
    if args.pin:
        overrides["pins"] = parse_pins(args.pin)
    if args.exclude:
        overrides["exclude"] = args.exclude
    if not overrides:
        del body["overrides"]
    return body


def cmd_submit(args: argparse.Namespace) -> int:
    body = request_body(args)
    client = make_client(args)
    job = client.submit(body, args.idempotency_key)
    if not args.wait:
        _out(args, job, job["id"])
        return exit_codes.OK
    print(f"job {job['id']} submitted", file=sys.stderr)
    bar = ProgressPrinter()
    job = client.wait(job["id"], timeout_s=args.timeout, raise_on_failure=False,
                      on_update=lambda j: j["stage"] and bar(j["stage"], j["stage_progress"], j["message"]))
    if job["status"] != "succeeded":
        _out(args, {"job": job}, f"job {job['id']} {job['status']}: {job['error'] or job['message']}")
        return exit_codes.FAILED
    result = client.result(job["id"])
    if args.json:
        print(json.dumps({"job": job, "result": result}, indent=2))
        return exit_codes.OK
    from workers.spec import JobResult

    print_report(JobResult.model_validate(result))
    return exit_codes.OK


def cmd_status(args: argparse.Namespace) -> int:
    job = make_client(args).job(args.job_id)
    line = f"{job['status']} {job['stage']} {job['progress']:.0%} {job['message']}"
    if job["error"]:
        line += f"\nerror: {job['error']}"
    _out(args, job, line)
    failed = job["status"] in FINISHED and job["status"] != "succeeded"
    return exit_codes.FAILED if failed else exit_codes.OK


def cmd_result(args: argparse.Namespace) -> int:
    result = make_client(args).result(args.job_id)
    text = json.dumps(result, indent=2)
    if args.output:
        Path(args.output).write_text(text)
        print(f"result written to {args.output}", file=sys.stderr)
    else:
        print(text)
    return exit_codes.OK


def cmd_artifact(args: argparse.Namespace) -> int:
    path = make_client(args).artifact(args.job_id, args.output)
    _out(args, {"path": str(path), "size_bytes": path.stat().st_size}, str(path))
    return exit_codes.OK


def cmd_upload(args: argparse.Namespace) -> int:
    if not Path(args.file).is_file():
        raise UsageError(f"no such file: {args.file}")
    client = make_client(args)
    if args.kind == "model":
        row = client.upload_model(args.file, args.name, args.architecture)
    elif args.architecture is not None:
        raise UsageError("--architecture is for models, not datasets")
    else:
        row = client.upload_dataset(args.file, args.name)
    _out(args, row, f"{row['id']} {row['name']}")
    return exit_codes.OK


def cmd_models(args: argparse.Namespace) -> int:
    rows = make_client(args).models()
    _out(args, rows, "\n".join(f"{r['id']} {r['name']} {r['architecture']} ({r['kind']}, "
                               f"{r['size_bytes']:,} bytes)" for r in rows))
    return exit_codes.OK


def cmd_datasets(args: argparse.Namespace) -> int:
    rows = make_client(args).datasets()
    _out(args, rows, "\n".join(f"{r['id']} {r['name']} ({r['format']}, {r['size_bytes']:,} bytes)"
                               for r in rows))
    return exit_codes.OK


def _out(args: argparse.Namespace, data, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
    elif text:  # an empty listing prints nothing
        print(text)


def add_remote_commands(sub) -> None:
    p = sub.add_parser("submit", help="submit a job to the service")
    p.add_argument("--spec", help="JSON file with the job request; flags override it")
    p.add_argument("--model")
    p.add_argument("--budget", action="append", default=[], help="KIND=LIMIT, repeatable")
    p.add_argument("--method")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--bits", help="candidate weight widths, e.g. 2,4,8")
    add_quantizer_option(p, default=None)
    p.add_argument("--pin", action="append", default=[], metavar="LAYER=BITS")
    p.add_argument("--exclude", action="append", default=[], metavar="LAYER",
                   help="leave this layer in 16-bit")
    p.add_argument("--dataset", help="name or id of an uploaded calibration dataset")
    p.add_argument("--export", help=f"the artifact's format: {', '.join(EXPORT_FORMATS)} "
                                    "(default bitalloc)")
    p.add_argument("--idempotency-key", help="a retry with the same key returns the same job")
    p.add_argument("--wait", action="store_true", help="wait, show progress, print the result")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds (exit 4)")
    add_client_options(p)
    p.set_defaults(func=cmd_submit)

    for name, func, text in (("status", cmd_status, "a job's status"),
                             ("result", cmd_result, "a finished job's result JSON"),
                             ("artifact", cmd_artifact, "download a finished job's packed model")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job_id")
        add_client_options(p)
        if name == "result":
            p.add_argument("-o", "--output", help="write to this file instead of stdout")
        if name == "artifact":
            p.add_argument("-o", "--output", default=".", help="folder to write it in (default .)")
        p.set_defaults(func=func)

    p = sub.add_parser("upload", help="upload a model or calibration dataset; prints its id and name")
    p.add_argument("kind", choices=["model", "dataset"])
    p.add_argument("file", help="model: .safetensors state dict (with --architecture) or a Hugging "
                                "Face folder as .zip/.tar(.gz); dataset: .safetensors, .txt or .jsonl")
    p.add_argument("--name", required=True, help="the name jobs use (letters, digits, . _ -)")
    p.add_argument("--architecture", help="model: the built-in architecture of a state dict, "
                                          "e.g. digits-cnn")
    add_client_options(p)
    p.set_defaults(func=cmd_upload)
    for name, func, text in (("models", cmd_models, "list your uploaded models"),
                             ("datasets", cmd_datasets, "list your uploaded calibration datasets")):
        p = sub.add_parser(name, help=text)
        add_client_options(p)
        p.set_defaults(func=func)
