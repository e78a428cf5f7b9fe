"""The commands that run the service on this machine: serve (the API, with an
embedded worker unless --no-worker), worker (the Celery job runtime,
`service.worker`), and keys (create, list, revoke API keys)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from service.cli import exit_codes
from service.config import Settings, get_settings


def _settings(args: argparse.Namespace) -> Settings:
    """Flags win over the environment; they are exported so a child worker sees them."""
    for flag, env in (("data", "BITALLOC_DATA"), ("host", "BITALLOC_HOST"),
                      ("port", "BITALLOC_PORT"), ("concurrency", "BITALLOC_WORKER_CONCURRENCY"),
                      ("workers", "BITALLOC_API_WORKERS")):
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
    return exit_codes.OK


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from service.db.migrate import upgrade

    upgrade(settings.db_url)
    from service.worker.celery_app import app  # the task loads the pipeline when a job runs

    app.worker_main(["worker", f"--loglevel={args.loglevel}", "-Q", ",".join(worker_queues(args, settings)),
                     f"--concurrency={settings.worker_concurrency}", "-n", "bitalloc@%h",
                     "--without-gossip", "--without-mingle"])
    return exit_codes.OK


def worker_queues(args: argparse.Namespace, settings: Settings) -> list[str]:
    """The queues a worker takes: jobs and shards by default; only shards
    (--shards-only), or the named ones (--queues: e.g. a `gpu` queue of its own)."""
    if getattr(args, "shards_only", False):
        if getattr(args, "queues", None):
            raise SystemExit("bitalloc worker: --shards-only and --queues exclude each other")
        return [settings.shard_queue_name]
    if getattr(args, "queues", None):
        queues = [q.strip() for q in args.queues.split(",") if q.strip()]
        bad = [q for q in queues if not q.replace("-", "").replace("_", "").replace(".", "").isalnum()]
        if not queues or bad:
            raise SystemExit(f"bitalloc worker: --queues takes comma-separated queue names "
                             f"(letters, digits, '.', '-', '_'), got {args.queues!r}")
        return queues
    return [settings.queue, settings.shard_queue_name]


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
            return exit_codes.OK if n else exit_codes.FAILED
    return exit_codes.OK


def _out(args: argparse.Namespace, data, text: str) -> None:
    print(json.dumps(data, indent=2) if getattr(args, "json", False) else text)


def add_admin_commands(sub) -> None:
    p = sub.add_parser("serve", help="serve the API with an embedded worker (SQLite and a "
                                     "filesystem broker unless DATABASE_URL / REDIS_URL)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--data", help="data folder (default $BITALLOC_DATA or ./data)")
    p.add_argument("--no-worker", action="store_true", help="API only")
    p.add_argument("--workers", type=int, help="API processes (default 1; $BITALLOC_API_WORKERS)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a job worker")
    p.add_argument("--data")
    p.add_argument("--concurrency", type=int, help="jobs at once (default 1)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--queues", help="comma-separated queues to take (default: the job queue "
                                    "$BITALLOC_QUEUE and its shard queue $BITALLOC_SHARD_QUEUE)")
    p.add_argument("--shards-only", action="store_true",
                   help="take only shards of other workers' jobs (the shard queue)")
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
