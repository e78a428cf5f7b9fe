"""Real service processes for the integration tests: `bitalloc serve` (with or
without its embedded worker) and `bitalloc worker`, each in its own process
group, logging to a file, and always stopped at the end."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

BITALLOC = [sys.executable, "-m", "service.cli"]
# reaping within seconds, so a killed worker's job comes back quickly
FAST_REAPING = {"BITALLOC_HEARTBEAT_INTERVAL_S": "1", "BITALLOC_HEARTBEAT_TIMEOUT_S": "10",
                "BITALLOC_REAPER_INTERVAL_S": "1", "BITALLOC_PROGRESS_INTERVAL_S": "0.5"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    key: str
    proc: subprocess.Popen
    log: Path
    env: dict[str, str]

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {key or self.key}"})

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def worker_pids(self) -> list[int]:
        """The embedded worker processes `bitalloc serve` started."""
        pids = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            pids += [int(p) for p in (task / "children").read_text().split()]
        return pids


def _stop(proc: subprocess.Popen, grace_s: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def serve(tmp: Path, env: dict[str, str], *args: str, startup_s: float = 90):
    log = tmp / "serve.log"
    port = free_port()
    env = {**os.environ, "BITALLOC_PORT": str(port), **env}
    with open(log, "w") as out:
        proc = subprocess.Popen([*BITALLOC, "serve", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = None
    workers: list[int] = []
    try:
        deadline = time.monotonic() + startup_s
        while server is None:
            found = re.search(r"API key \(tenant local\): (\S+)", log.read_text(errors="replace"))
            if found:
                server = Server(f"http://127.0.0.1:{port}", found.group(1), proc, log, env)
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bitalloc serve did not start:\n{log.read_text()}")
            else:
                time.sleep(0.2)
        workers = server.worker_pids()
        yield server
    finally:
        if server is not None:
            workers += server.worker_pids() if proc.poll() is None else []
        _stop(proc)
        for pid in workers:  # the embedded worker leaves with its parent
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)


@contextmanager
def worker(tmp: Path, env: dict[str, str], *args: str, name: str = "worker"):
    """`bitalloc worker *args`, logging to tmp/<name>.log."""
    log = tmp / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*BITALLOC, "worker", *args], env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        _stop(proc)


def wait_for(client: httpx.Client, job_id: str, until, timeout_s: float, log=lambda: ""):
    """Poll the job until `until(job)` holds; returns the job."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} ({job['message']}) after "
                                 f"{timeout_s} s\n{log()}")
        time.sleep(0.25)


def finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")
