"""One job, many workers: the sensitivity stage of one job on one worker against two.

Real service processes on this machine's PostgreSQL and Redis (a fresh database and
queue of its own): `bitalloc serve --no-worker`, then for each worker count a first
`bitalloc worker` (it takes the job) and `--shards-only` workers beside it, each with
`OMP_NUM_THREADS=1`. The same job (same seed) runs once per worker count; its cached
table is removed after each run, so every run computes it. Reported per run: the
sensitivity stage's wall time (the job's own timing), the workers that took part,
shards and the seconds each worker computed (from `job_shards`), and whether the
table equals the first run's.

    OMP_NUM_THREADS=1 .venv/bin/python bench/shards.py                       # smollm2-135m fisher, 1 and 2
    OMP_NUM_THREADS=1 .venv/bin/python bench/shards.py --model minilm --param block=32 --param max_probes=64

A worker started cold loads the model when it gets its first shard (smollm2: ~15 s
of the stage). Writes bench/results/shards-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import httpx  # noqa: E402
from sqlalchemy import create_engine, select, text  # noqa: E402

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
BITALLOC = [sys.executable, "-m", "service.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([*BITALLOC, *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=ROOT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def _database():
    name = f"bitalloc_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _server(stack: ExitStack, env: dict[str, str], tmp: Path) -> tuple[str, str]:
    port = _free_port()
    log = tmp / "serve.log"
    proc = _start(["serve", "--no-worker"], {**env, "BITALLOC_PORT": str(port)}, log)
    stack.callback(_stop, proc)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"API key \(tenant local\): (\S+)", log.read_text(errors="replace"))
        if found:
            return f"http://127.0.0.1:{port}", found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    raise RuntimeError(f"bitalloc serve did not start:\n{log.read_text()}")


def _run(api: httpx.Client, job: dict, timeout_s: float) -> dict:
    job_id = api.post("/v1/jobs", json=job).raise_for_status().json()["id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = api.get(f"/v1/jobs/{job_id}").json()
        if state["status"] in ("succeeded", "failed", "cancelled"):
            if state["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {state['status']}: {state['error']}")
            return state
        time.sleep(1)
    raise RuntimeError(f"job {job_id} not done after {timeout_s} s")


def _per_worker(db_url: str, job_id: str) -> dict[str, dict]:
    from service.db.models import JobShard

    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(select(JobShard.claimed_by, JobShard.seconds, JobShard.attempts)
                            .where(JobShard.job_id == uuid.UUID(job_id))).all()
    engine.dispose()
    out: dict[str, dict] = {}
    for who, seconds, _ in rows:
        w = out.setdefault(who or "?", {"shards": 0, "seconds": 0.0})
        w["shards"] += 1
        w["seconds"] += seconds or 0.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="fisher")
    ap.add_argument("--param", action="append", default=[], help="method parameter k=v (JSON value)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=None, help="the job's seed (default: a random one)")
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()
    params = {k: json.loads(v) for k, v in (p.split("=", 1) for p in args.param)}
    seed = args.seed if args.seed is not None else random.randrange(1, 2**31)
    job = {"model": args.model, "method": args.method, "method_params": params, "seed": seed,
           "budgets": {"avg_bits": 4}, "pareto_points": 0}
    from sensitivity.paths import cache_dir
    from service.config import Settings

    tmp = ROOT / "bench" / "results" / f"shards-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    runs = []
    with _database() as pg, ExitStack() as stack:
        queue = f"bitalloc-bench-{os.getpid()}"
        env = {**os.environ, "BITALLOC_DATA": str(tmp / "data"), "DATABASE_URL": pg, "REDIS_URL": REDIS,
               "BITALLOC_QUEUE": queue, "BITALLOC_SHARDS": "on", "OMP_NUM_THREADS": "1"}
        url, key = _server(stack, env, tmp)
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        db_url = Settings(database_url=pg).db_url
        reference = None
        for n in args.workers:
            with ExitStack() as workers:
                for i in range(n):
                    extra = [] if i == 0 else ["--shards-only"]
                    proc = _start(["worker", *extra], env, tmp / f"worker-{n}-{i}.log")
                    workers.callback(_stop, proc)
                started = time.perf_counter()
                state = _run(api, job, args.timeout)
                wall = time.perf_counter() - started
            result = api.get(f"/v1/jobs/{state['id']}/result").json()
            sens = result["sensitivity"]
            # the next run computes the table again
            (cache_dir("tables") / f"{sens['cache_key']}.json").unlink(missing_ok=True)
            table = {row["name"]: row["omega_by_bits"] for row in result["layers"]}
            reference = reference or table
            runs.append({"workers": n, "sensitivity_s": state["timings"]["stages"]["sensitivity"],
                         "job_wall_s": wall, "workers_reported": sens["workers"],
                         "shards": sens["shards"]["shards"], "max_rel_error": sens.get("max_rel_error"),
                         "backward_passes": sens.get("backward_passes"), "same_table": table == reference,
                         "per_worker": _per_worker(db_url, state["id"])})
            print(f"{n} worker(s): sensitivity {runs[-1]['sensitivity_s']:.1f} s, "
                  f"{sens['workers']} took part, {runs[-1]['shards']} shards", flush=True)
    base = runs[0]["sensitivity_s"]
    print(f"\n{args.model} {args.method} {params or ''} seed {seed}")
    print("| workers | sensitivity stage | × one worker | took part | shards | shard seconds per worker "
          "| same table |")
    print("| --: | --: | --: | --: | --: | --- | --- |")
    for r in runs:
        split = ", ".join(f"{w['shards']} in {w['seconds']:.0f} s" for w in r["per_worker"].values())
        print(f"| {r['workers']} | {r['sensitivity_s']:.1f} s | {r['sensitivity_s'] / base:.2f} | "
              f"{r['workers_reported']} | {r['shards']} | {split} | {r['same_table']} |")
    load = os.getloadavg()
    out = ROOT / "bench" / "results" / f"shards-{args.model}.json"
    out.write_text(json.dumps({"model": args.model, "method": args.method, "params": params, "seed": seed,
                               "cpus": os.cpu_count(), "loadavg_end": load, "runs": runs}, indent=2))
    print(f"\nload average at the end {load[0]:.1f}; wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
