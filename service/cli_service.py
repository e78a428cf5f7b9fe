"""The service's subcommands of `bitalloc`: serve, worker, keys, submit,
status, result. JSON output with --json for pipelines; non-zero exit status
when a job fails or a request is refused."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from service.client import ApiError, Client
from service.config import Settings, get_settings
from service.progress_bar import ProgressPrinter

EXIT_FAILED = 1
EXIT_REFUSED = 2


def _settings(args: argparse.Namespace) -> Settings:
    """Flags win over the environment; they are exported so a child worker sees them."""
    for flag, env in (("data", "BITALLOC_DATA"), ("host", "BITALLOC_HOST"),
                      ("port", "BITALLOC_PORT"), ("concurrency", "BITALLOC_WORKER_CONCURRENCY")):
        value = getattr(args, flag, None)
        if value is not None:
            os.environ[env] = str(value)
    if getattr(args, "data", None) is not None:
        os.environ["BITALLOC_DATA"] = str(Path(args.data).resolve())
    get_settings.cache_clear()
    return get_settings()


def cmd_serve(args: argparse.Namespace) -> int:
    from service.serve import serve

    serve(_settings(args), with_worker=not args.no_worker)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from service.db.migrate import upgrade

    upgrade(settings.db_url)
    from workers.celery_app import app  # the worker side: loads the pipeline lazily

    app.worker_main(["worker", f"--loglevel={args.loglevel}", "-Q", settings.queue,
                     f"--concurrency={settings.worker_concurrency}", "-n", "bitalloc@%h",
                     "--without-gossip", "--without-mingle"])
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from service import crud
    from service.db.migrate import upgrade
    from service.db.session import session_scope

    settings = _settings(args)
    upgrade(settings.db_url)
    with session_scope(settings.db_url) as session:
        if args.keys_command == "create":
            row, key = crud.create_api_key(session, args.tenant, args.label)
            _out(args, {"tenant": args.tenant, "key": key, "prefix": row.prefix},
                 f"API key for tenant {args.tenant} (shown once, keep it):\n{key}")
        elif args.keys_command == "list":
            rows = [{"tenant": t, "prefix": k.prefix, "label": k.label,
                     "created_at": k.created_at.isoformat(),
                     "revoked": k.revoked_at is not None} for k, t in crud.list_api_keys(session)]
            _out(args, rows, "\n".join(
                f"{r['tenant']:<20} {r['prefix']}…  {r['label']:<20} {r['created_at'][:19]}"
                f"{'  revoked' if r['revoked'] else ''}" for r in rows) or "no keys")
        else:
            n = crud.revoke_api_key(session, args.prefix)
            _out(args, {"revoked": n}, f"revoked {n} key(s)")
            return 0 if n else EXIT_FAILED
    return 0


def _guarded(func):
    """API refusals and time-outs become a message and an exit status, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ApiError as exc:
            print(f"error: {exc.detail if exc.status else exc}", file=sys.stderr)
            return EXIT_REFUSED if 400 <= exc.status < 500 else EXIT_FAILED
        except TimeoutError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED

    return run


def _client(args: argparse.Namespace) -> Client:
    settings = _settings(args)
    key = args.key or os.environ.get("BITALLOC_API_KEY")
    if not key and settings.key_file.exists():
        key = settings.key_file.read_text().strip()
    url = args.url or os.environ.get("BITALLOC_URL") or f"http://{settings.host}:{settings.port}"
    return Client(url, key)


def cmd_submit(args: argparse.Namespace) -> int:
    from service.cli import parse_bits_list, parse_budgets, parse_params

    body: dict = json.loads(Path(args.spec).read_text()) if args.spec else {}
    for field, value in (("model", args.model), ("method", args.method),
                         ("dataset", args.dataset)):
        if value is not None:
            body[field] = value
    if args.budget:
        body["budgets"] = parse_budgets(args.budget)
    if args.param:
        body["method_params"] = parse_params(args.param)
    if args.bits:
        body["weight_bits"] = parse_bits_list(args.bits, "--bits")
    client = _client(args)
    job = client.submit(body, args.idempotency_key)
    if not args.wait:
        _out(args, job, job["id"])
        return 0
    bar = ProgressPrinter()
    if not args.json:
        print(f"job {job['id']} submitted", file=sys.stderr)
    job = client.wait(job["id"], on_update=lambda j: j["stage"] and bar(
        j["stage"], j["stage_progress"], j["message"]))
    return _finished(args, client, job)


def cmd_status(args: argparse.Namespace) -> int:
    job = _client(args).job(args.job_id)
    line = f"{job['status']} {job['stage']} {job['progress']:.0%} {job['message']}"
    if job["error"]:
        line += f"\nerror: {job['error']}"
    _out(args, job, line)
    return EXIT_FAILED if job["status"] in ("failed", "cancelled") else 0


def cmd_result(args: argparse.Namespace) -> int:
    result = _client(args).result(args.job_id)
    text = json.dumps(result, indent=2)
    if args.output:
        Path(args.output).write_text(text)
        print(f"result written to {args.output}", file=sys.stderr)
    else:
        print(text)
    return 0


def _finished(args: argparse.Namespace, client: Client, job: dict) -> int:
    if job["status"] != "succeeded":
        _out(args, job, f"job {job['id']} {job['status']}: {job['error'] or job['message']}")
        return EXIT_FAILED
    result = client.result(job["id"])
    if args.json:
        print(json.dumps({"job": job, "result": result}, indent=2))
        return 0
    from service.cli import print_report
    from workers.spec import JobResult

    print_report(JobResult.model_validate(result))
    return 0


def _out(args: argparse.Namespace, data, text: str) -> None:
    print(json.dumps(data, indent=2) if getattr(args, "json", False) else text)


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="API address (default $BITALLOC_URL or the local server)")
    p.add_argument("--key", help="API key (default $BITALLOC_API_KEY or the local key)")
    p.add_argument("--data", help="data folder of a local server, for its key")
    p.add_argument("--json", action="store_true", help="print JSON")


def add_service_commands(sub) -> None:
    p = sub.add_parser("serve", help="serve the API with an embedded worker (SQLite and a "
                                     "filesystem broker unless DATABASE_URL / REDIS_URL)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--data", help="data folder (default $BITALLOC_DATA or ./data)")
    p.add_argument("--no-worker", action="store_true", help="API only")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a job worker")
    p.add_argument("--data")
    p.add_argument("--concurrency", type=int, help="jobs at once (default 1)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("keys", help="create, list or revoke API keys")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("create", help="a new key for a tenant (created if new)")
    k.add_argument("--tenant", required=True)
    k.add_argument("--label", default="")
    keys.add_parser("list", help="keys by tenant (prefixes only)")
    k = keys.add_parser("revoke", help="revoke keys by their listed prefix")
    k.add_argument("prefix")
    for parser in keys.choices.values():
        parser.add_argument("--data")
        parser.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("submit", help="submit a job to the service")
    p.add_argument("--spec", help="JSON file with the job request; flags override it")
    p.add_argument("--model")
    p.add_argument("--budget", action="append", default=[], help="KIND=LIMIT, repeatable")
    p.add_argument("--method")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--bits", help="candidate weight widths, e.g. 2,4,8")
    p.add_argument("--dataset", help="name or id of an uploaded calibration dataset")
    p.add_argument("--idempotency-key", help="a retry with the same key returns the same job")
    p.add_argument("--wait", action="store_true", help="wait, show progress, print the result")
    _client_options(p)
    p.set_defaults(func=_guarded(cmd_submit))

    for name, func, text in (("status", cmd_status, "a job's status"),
                             ("result", cmd_result, "a finished job's result JSON")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job_id")
        _client_options(p)
        if name == "result":
            p.add_argument("--output", help="write to a file instead of stdout")
        p.set_defaults(func=_guarded(func))
