"""Run a call in a forked child process and kill it when it outlives its deadline.

CBC and HiGHS check their time limit between phases, not during root processing
of a large program, so a solve can run well past ``time_limit_s``. The backend
runs in a child process of its own process group; past the deadline the whole
group (the child and the CBC process it started) gets SIGKILL and the caller
gets ``Overrun``, so it can fall back to the incumbent it already has. Where
``os.fork`` does not exist the call runs inline, with the backends' own limits only.
"""

from __future__ import annotations

import os
import pickle
import select
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

CAN_FORK = hasattr(os, "fork") and hasattr(os, "killpg")


class Overrun(Exception):
    """The call was still running at its deadline and was killed."""


def call_with_deadline(fn: Callable[..., T], *args, seconds: float, **kwargs) -> T:
    """``fn(*args, **kwargs)`` in a child process; ``Overrun`` if it takes over ``seconds``.

    The result (and an exception, re-raised here) travels back pickled. Temporary
    files the child writes (PuLP's model and solution files) go to a folder that
    is removed afterwards, also when the child is killed.
    """
    if not CAN_FORK:
        return fn(*args, **kwargs)
    deadline = time.monotonic() + max(seconds, 0.0)
    scratch = tempfile.mkdtemp(prefix="bitalloc-solve-")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        status = 1
        try:
            os.setpgid(0, 0)
            for var in ("TMPDIR", "TEMP", "TMP"):
                os.environ[var] = scratch
            tempfile.tempdir = scratch
            try:
                payload = pickle.dumps((True, fn(*args, **kwargs)))
            except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
                try:
                    payload = pickle.dumps((False, exc))
                except Exception:  # noqa: BLE001
                    payload = pickle.dumps((False, RuntimeError(repr(exc))))
            with os.fdopen(write_end, "wb") as out:
                out.write(payload)
            status = 0
        finally:
            os._exit(status)

    os.close(write_end)
    try:
        try:
            os.setpgid(pid, pid)  # also here: no window where a kill misses the group
        except OSError:
            pass
        chunks, done = [], False
        while not done:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([read_end], [], [], left)
            if ready:
                chunk = os.read(read_end, 1 << 16)
                if chunk:
                    chunks.append(chunk)
                else:
                    done = True
        if not done:
            _kill(pid)
            raise Overrun(f"still running after {seconds:.3g} s; killed")
        os.waitpid(pid, 0)
        if not chunks:
            raise RuntimeError("the solver process died without a result")
        ok, value = pickle.loads(b"".join(chunks))
        if not ok:
            raise value
        return value
    finally:
        os.close(read_end)
        shutil.rmtree(scratch, ignore_errors=True)


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
