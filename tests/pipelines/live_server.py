"""One real `bitalloc serve` (SQLite, embedded worker) shared by the dashboard
and pipeline tests of a session: started by whichever asks first, stopped by
whichever fixture is torn down first (at the end of the session)."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "service"))
from svc_processes import FAST_REAPING, Server, serve  # noqa: E402

_running: dict[str, object] = {}


def start(tmp_path_factory) -> Server:
    if "server" not in _running:
        tmp = tmp_path_factory.mktemp("serve-live")
        env = {"BITALLOC_DATA": str(tmp / "data"), "DATABASE_URL": "", "REDIS_URL": "", **FAST_REAPING}
        stack = ExitStack()
        _running["server"] = stack.enter_context(serve(tmp, env))
        _running["stack"] = stack
    return _running["server"]


def stop() -> None:
    stack = _running.pop("stack", None)
    _running.pop("server", None)
    if stack is not None:
        stack.close()
