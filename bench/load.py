"""Load benchmark of the API on loopback: job-status polling throughput and p50/p99
latency with 1, 8 and 32 concurrent clients, and submit throughput, against a real
`bitalloc serve --no-worker` process on the default setup (SQLite, filesystem
broker) and on PostgreSQL + Redis. No worker runs: submitted jobs stay queued,
which is what a status poll reads most of the time anyway.

The per-key rate limit and the per-tenant job cap are switched off for the run
(BITALLOC_RATE_LIMIT_PER_S=0, BITALLOC_MAX_ACTIVE_JOBS_PER_TENANT=0): this
measures the service, not its abuse limits.

The client is a lean raw HTTP/1.1 one over keep-alive connections (on a 2-core
machine a heavy client takes CPU from the server it measures); it reads every
response in full and checks its status and body. `--client httpx` uses httpx.
Each row also gives the server's CPU time per request (all its processes), which
a busy shared machine disturbs far less than throughput and latency.

    .venv/bin/python bench/load.py                  # both setups, prints a table,
                                                    # writes bench/results/load.json
    .venv/bin/python bench/load.py --setups sqlite --seconds 3 --api-workers 2
    git worktree add /tmp/before <commit>           # the same run against an older
    .venv/bin/python bench/load.py --root /tmp/before --output /tmp/before.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "load.json"
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
JOB = {"model": "digits-cnn", "method": "hawq_v2",
       "method_params": {"max_probes": 10, "min_probes": 4, "tol": 0.2},
       "budgets": {"avg_bits": 4}, "pareto_points": 0}
CLIENTS = (1, 8, 32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(env: dict[str, str], root: Path = ROOT):
    """(url, key) of a `bitalloc serve --no-worker` (of the checkout at `root`) in its
    own process group."""
    port = free_port()
    with tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False) as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--no-worker"], cwd=root,
            env={**os.environ, **env, "BITALLOC_PORT": str(port), "BITALLOC_RATE_LIMIT_PER_S": "0",
                 "BITALLOC_MAX_ACTIVE_JOBS_PER_TENANT": "0"},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (found := re.search(r"API key \(tenant local\): (\S+)",
                                      Path(log.name).read_text(errors="replace"))):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bitalloc serve did not start:\n{Path(log.name).read_text()}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", found.group(1), proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        Path(log.name).unlink(missing_ok=True)


@contextmanager
def sqlite_setup(tmp: Path):
    yield {"BITALLOC_DATA": str(tmp / "sqlite"), "DATABASE_URL": "", "REDIS_URL": ""}


@contextmanager
def postgres_setup(tmp: Path):
    import redis
    from sqlalchemy import create_engine, text

    name = f"bitalloc_load_{uuid.uuid4().hex[:8]}"
    queue = f"bitalloc-load-{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield {"BITALLOC_DATA": str(tmp / "pg"), "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
               "REDIS_URL": "redis://127.0.0.1:6379/0", "BITALLOC_QUEUE": queue}
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        for key in client.scan_iter(f"*{queue}*"):
            client.delete(key)


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the processes of a process group:
    the server's cost per request, which a busy shared machine disturbs far less
    than its throughput."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def summary(latencies: list[float], seconds: float) -> dict:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    return {"requests": len(ordered), "seconds": round(seconds, 2),
            "per_s": round(len(ordered) / seconds, 1), "p50_ms": round(pct(0.50), 2),
            "p99_ms": round(pct(0.99), 2), "mean_ms": round(statistics.fmean(ordered) * 1000, 2)}


class RawClient:
    """One keep-alive HTTP/1.1 connection with as little client work as possible: on
    this 2-core machine the load generator shares the CPU with the server, and a
    heavy client (httpx) would measure itself. Every response is read in full and
    checked by the caller; anything unexpected counts as an error."""

    def __init__(self, url: str, key: str):
        self.host, _, port = url.removeprefix("http://").partition(":")
        self.port = int(port)
        self.head = f"Host: {self.host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        self.reader = self.writer = None

    async def __aenter__(self) -> RawClient:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *_exc) -> None:
        self.writer.close()

    async def get(self, path: str) -> tuple[int, bytes]:
        self.writer.write(f"GET {path} HTTP/1.1\r\n{self.head}\r\n".encode())
        return await self._response()

    async def post(self, path: str, json_body: dict) -> tuple[int, bytes]:
        body = json.dumps(json_body).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\n{self.head}Content-Type: application/json"
                          f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        return await self._response()

    async def _response(self) -> tuple[int, bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        at = head.lower().find(b"\r\ncontent-length:")
        if at < 0:  # the service always sends Content-Length for JSON
            raise RuntimeError(f"no Content-Length in response: {head[:200]!r}")
        length = int(head[at + 17:head.index(b"\r\n", at + 2)])
        return status, await self.reader.readexactly(length)


class HttpxClient:
    """The same interface on httpx (--client httpx: what a Python user would run)."""

    def __init__(self, url: str, key: str):
        self.client = httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))

    async def __aenter__(self) -> HttpxClient:
        return self

    async def __aexit__(self, *_exc) -> None:
        await self.client.aclose()

    async def get(self, path: str) -> tuple[int, bytes]:
        r = await self.client.get(path)
        return r.status_code, r.content

    async def post(self, path: str, json_body: dict) -> tuple[int, bytes]:
        r = await self.client.post(path, json=json_body)
        return r.status_code, r.content


CLIENT_KINDS = {"raw": RawClient, "httpx": HttpxClient}


async def drive(url: str, key: str, clients: int, seconds: float, request,
                kind: str = "raw", pgid: int | None = None) -> tuple[dict, int]:
    """`clients` connections each sending `request(client, n, i)` back to back; the
    request returns whether its response was right."""
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def one(n: int) -> None:
        nonlocal errors
        async with CLIENT_KINDS[kind](url, key) as c:
            i = 0
            while time.perf_counter() < stop:
                t = time.perf_counter()
                ok = await request(c, n, i)
                latencies.append(time.perf_counter() - t)
                errors += not ok
                i += 1

    cpu = group_cpu_s(pgid) if pgid else 0.0
    start = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(clients)))
    found = summary(latencies, time.perf_counter() - start)
    if pgid:
        found["server_cpu_ms"] = round((group_cpu_s(pgid) - cpu) * 1000 / len(latencies), 3)
    return found, errors


async def measure(url: str, key: str, seconds: float, kind: str = "raw",
                  pgid: int | None = None) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as c:
        ids = [(await c.post("/v1/jobs", json={**JOB, "seed": i})).json()["id"] for i in range(32)]
    paths = [(f"/v1/jobs/{i}", f'"id":"{i}"'.encode()) for i in ids]

    async def status(c, n, i) -> bool:
        path, expected = paths[(n + i) % len(paths)]
        code, body = await c.get(path)
        return code == 200 and expected in body and b'"status":"queued"' in body

    async def submit(c, n, i) -> bool:
        code, body = await c.post("/v1/jobs", {**JOB, "seed": 1000 + n * 100_000 + i})
        return code == 202 and b'"status":"queued"' in body

    await drive(url, key, 8, min(1.0, seconds), status, kind)  # warm-up
    out: dict = {"status": {}, "submit": {}}
    for clients in CLIENTS:
        stats, errors = await drive(url, key, clients, seconds, status, kind, pgid)
        out["status"][clients] = {**stats, "errors": errors}
    for clients in (1, 8):
        stats, errors = await drive(url, key, clients, seconds, submit, kind, pgid)
        out["submit"][clients] = {**stats, "errors": errors}
    return out


def run(coro):
    """On uvloop when it is installed (a cheaper client), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", default="sqlite,postgres", help="sqlite,postgres")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--client", choices=sorted(CLIENT_KINDS), default="raw",
                        help="raw: a lean asyncio HTTP/1.1 client (default); httpx")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="serve the checkout there (e.g. a `git worktree` of an older "
                             "commit, for a before/after comparison in the same run)")
    parser.add_argument("--api-workers", type=int, default=1,
                        help="API processes of the server (BITALLOC_API_WORKERS)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    setups = {"sqlite": ("SQLite + filesystem broker", sqlite_setup),
              "postgres": ("PostgreSQL + Redis", postgres_setup)}
    commit = subprocess.run(["git", "-C", str(args.root), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "load_avg_before": os.getloadavg()},
               "server": {"root": str(args.root.resolve()), "commit": commit},
               "client": args.client, "api_workers": args.api_workers,
               "seconds_per_measurement": args.seconds, "setups": {}}
    print(f"server {args.root.resolve()} at {commit} ({args.api_workers} API process(es)), "
          f"client {args.client}, load average {os.getloadavg()[0]:.2f}")
    print(f"{'setup':28} {'kind':7} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6} {'server CPU ms/req':>17}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.setups.split(","):
            label, setup = setups[name]
            env_workers = {"BITALLOC_API_WORKERS": str(args.api_workers)}
            with setup(Path(tmp)) as env, server({**env, **env_workers}, args.root) as (
                    url, key, pgid):
                found = run(measure(url, key, args.seconds, args.client, pgid))
            results["setups"][name] = {"label": label, **found}
            for kind in ("status", "submit"):
                for clients, s in found[kind].items():
                    print(f"{label:28} {kind:7} {clients:>7} {s['per_s']:>9.1f} {s['p50_ms']:>8.2f} "
                          f"{s['p99_ms']:>8.2f} {s['errors']:>6} {s['server_cpu_ms']:>17.3f}",
                          flush=True)
    results["machine"]["load_avg_after"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"load average after: {os.getloadavg()[0]:.2f}; wrote {args.output}")


if __name__ == "__main__":
    main()
