"""Load benchmark of the API on loopback: job-status polling throughput and p50/p99
latency with 1, 8 and 32 concurrent clients, and submit throughput, against a real
`bitalloc serve --no-worker` process on the default setup (SQLite, filesystem
broker) and on PostgreSQL + Redis. No worker runs: submitted jobs stay queued,
which is what a status poll reads most of the time anyway.

The per-key rate limit and the per-tenant job cap are switched off for the run
(BITALLOC_RATE_LIMIT_PER_S=0, BITALLOC_MAX_ACTIVE_JOBS_PER_TENANT=0): this
measures the service, not its abuse limits.

    .venv/bin/python bench/load.py                  # both setups, prints a table,
                                                    # writes bench/results/load.json
    .venv/bin/python bench/load.py --setups sqlite --seconds 3
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
def server(env: dict[str, str]):
    """(url, key) of a `bitalloc serve --no-worker` in its own process group."""
    port = free_port()
    with tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False) as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--no-worker"], cwd=ROOT,
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
        yield f"http://127.0.0.1:{port}", found.group(1)
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


def summary(latencies: list[float], seconds: float) -> dict:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    return {"requests": len(ordered), "seconds": round(seconds, 2),
            "per_s": round(len(ordered) / seconds, 1), "p50_ms": round(pct(0.50), 2),
            "p99_ms": round(pct(0.99), 2), "mean_ms": round(statistics.fmean(ordered) * 1000, 2)}


async def drive(url: str, key: str, clients: int, seconds: float, request) -> tuple[dict, int]:
    """`clients` connections each sending `request(client, i)` back to back."""
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {key}"}
    stop = time.perf_counter() + seconds

    async def one(n: int) -> None:
        nonlocal errors
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                     timeout=30) as c:
            i = 0
            while time.perf_counter() < stop:
                t = time.perf_counter()
                r = await request(c, n, i)
                latencies.append(time.perf_counter() - t)
                errors += r.status_code >= 400
                i += 1

    start = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(clients)))
    return summary(latencies, time.perf_counter() - start), errors


async def measure(url: str, key: str, seconds: float) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as c:
        ids = [(await c.post("/v1/jobs", json={**JOB, "seed": i})).json()["id"] for i in range(32)]

    async def status(c, n, i):
        return await c.get(f"/v1/jobs/{ids[(n + i) % len(ids)]}")

    async def submit(c, n, i):
        return await c.post("/v1/jobs", json={**JOB, "seed": 1000 + n * 100_000 + i})

    await drive(url, key, 8, min(1.0, seconds), status)  # warm-up
    out: dict = {"status": {}, "submit": {}}
    for clients in CLIENTS:
        stats, errors = await drive(url, key, clients, seconds, status)
        out["status"][clients] = {**stats, "errors": errors}
    for clients in (1, 8):
        stats, errors = await drive(url, key, clients, seconds, submit)
        out["submit"][clients] = {**stats, "errors": errors}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", default="sqlite,postgres", help="sqlite,postgres")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    setups = {"sqlite": ("SQLite + filesystem broker", sqlite_setup),
              "postgres": ("PostgreSQL + Redis", postgres_setup)}
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "load_avg_before": os.getloadavg()[0]},
               "seconds_per_measurement": args.seconds, "setups": {}}
    print(f"{'setup':28} {'kind':7} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.setups.split(","):
            label, setup = setups[name]
            with setup(Path(tmp)) as env, server(env) as (url, key):
                found = asyncio.run(measure(url, key, args.seconds))
            results["setups"][name] = {"label": label, **found}
            for kind in ("status", "submit"):
                for clients, s in found[kind].items():
                    print(f"{label:28} {kind:7} {clients:>7} {s['per_s']:>9.1f} {s['p50_ms']:>8.2f} "
                          f"{s['p99_ms']:>8.2f} {s['errors']:>6}")
    results["machine"]["load_avg_after"] = os.getloadavg()[0]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
