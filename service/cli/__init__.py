"""`bitalloc`: the command line, one parser assembled from its parts.

    local       run, latency: the pipeline in this process (imported lazily)
    remote      submit, status, result, artifact, upload, models, datasets
    admin       serve, worker, keys
    args        reading flag values; UsageError
    connection  the server and API key of the remote commands
    report      a result for people
    progress    the progress bar (a terminal) or lines (a log)
    exit_codes  every command's exit statuses, and errors mapped to them

The parts import only `args`, `connection`, `report`, `progress` and
`exit_codes`, never this module or each other."""

from __future__ import annotations

import argparse
import sys

from service.cli import exit_codes
from service.cli.admin import add_admin_commands
from service.cli.local import add_local_commands
from service.cli.remote import add_remote_commands


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bitalloc", description="Mixed-precision bit allocation.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_local_commands(sub)
    add_admin_commands(sub)
    add_remote_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        known = exit_codes.for_error(exc)
        if known is None:
            raise
        status, message = known
        print(f"error: {message}", file=sys.stderr)
        return status
