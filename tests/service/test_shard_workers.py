"""One job, many workers, with real processes on this machine's PostgreSQL and Redis:
`bitalloc serve --no-worker` and one or two `bitalloc worker`s. A fisher job on
minilm (a round of 32 probes: 4 shards of 8) split over two workers gives the same
table as on one and reports both; its progress never goes back; a worker killed
(SIGKILL) while it holds a shard costs that shard only, which the job's worker runs
again, and the job ends as on one worker, in its first attempt. `empirical`'s layers
split the same way."""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from svc_processes import FAST_REAPING, finished, serve, wait_for, worker

from sensitivity.paths import cache_dir
from service.config import Settings
from service.db.models import Job, JobShard

pytestmark = pytest.mark.slow

# a seed of this run's own, so no cached table is found; every layer to max_probes
SEED = random.randrange(1, 2**31)
JOB = {"model": "minilm", "method": "fisher", "seed": SEED, "budgets": {"avg_bits": 4},
       "method_params": {"block": 32, "min_probes": 64, "max_probes": 64, "tol": 0.01},
       "pareto_points": 0}
SHARDS = 8  # 2 rounds of 32 probes, chunks of 8, one calibration batch
TIMEOUT_S = 600


class Cluster:
    def __init__(self, tmp: Path, env: dict[str, str], server, db_url: str):
        self.tmp, self.env, self.server = tmp, env, server
        self.db = create_engine(db_url)

    def run(self, watch=None, spec: dict = JOB) -> tuple[dict, dict]:
        """Submit the job, wait for it (calling `watch(job)` on every poll); (job, result)."""
        api = self.server.client()
        job = api.post("/v1/jobs", json=spec).json()
        seen = []

        def until(j):
            seen.append(j)
            if watch is not None:
                watch(j)
            return finished(j)

        done = wait_for(api, job["id"], until, TIMEOUT_S, self.logs)
        assert done["status"] == "succeeded", (done["error"], self.logs())
        self.forget_table(done)
        progress = [j["progress"] for j in seen]
        assert progress == sorted(progress), progress  # never goes back
        stage = [j["stage_progress"] for j in seen if j["stage"] == "sensitivity"]
        assert stage == sorted(stage), stage
        return done, api.get(f"/v1/jobs/{job['id']}/result").json()

    def forget_table(self, job: dict) -> None:
        """The next job must compute its table again, not read this one's."""
        key = job["timings"]["sensitivity_cache"]["cache_key"]
        (cache_dir("tables") / f"{key}.json").unlink()

    def shards(self, job_id: str) -> list[JobShard]:
        with self.db.connect() as conn:
            return list(conn.execute(select(JobShard).where(JobShard.job_id == uuid.UUID(job_id))
                                     .order_by(JobShard.key)))

    def job_worker(self, job_id: str) -> str | None:
        with self.db.connect() as conn:
            return conn.scalar(select(Job.worker).where(Job.id == uuid.UUID(job_id)))

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-40:])
                         for p in sorted(self.tmp.glob("*.log")))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, pg_url, redis_url):
    import redis

    tmp = tmp_path_factory.mktemp("shards")
    queue = f"bitalloc-shards-{os.getpid()}-{int(time.time())}"
    env = {"BITALLOC_DATA": str(tmp / "data"), "DATABASE_URL": pg_url, "REDIS_URL": redis_url,
           "BITALLOC_QUEUE": queue, "BITALLOC_SHARDS": "on", "OMP_NUM_THREADS": "1", **FAST_REAPING}
    try:
        with serve(tmp, env, "--no-worker") as server:
            yield Cluster(tmp, env, server, Settings(database_url=pg_url).db_url)
    finally:
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"*{queue}*"):
            client.delete(key)


def _table(result: dict) -> dict:
    return {row["name"]: (row["omega_by_bits"], row["stats"]) for row in result["layers"]}


@pytest.fixture(scope="module")
def one_worker(cluster):
    with worker(cluster.tmp, cluster.env, name="worker-a"):
        job, result = cluster.run()
    return job, result


def test_one_worker_runs_every_shard(one_worker, cluster):
    job, result = one_worker
    sens = result["sensitivity"]
    assert sens["workers"] == 1 and sens["shards"]["shards"] == SHARDS
    rows = cluster.shards(job["id"])
    assert len(rows) == SHARDS and all(r.status == "done" and r.attempts == 1 for r in rows)


def test_two_workers_give_the_same_table_and_both_take_part(one_worker, cluster):
    _, alone = one_worker
    with worker(cluster.tmp, cluster.env, name="worker-a"), \
            worker(cluster.tmp, cluster.env, "--shards-only", name="worker-b"):
        job, result = cluster.run()
    assert result["sensitivity"]["workers"] == 2, cluster.logs()
    assert result["sensitivity"]["shards"]["shards"] == SHARDS
    assert _table(result) == _table(alone)  # exactly: the same shards, merged in the same order
    assert len({r.claimed_by for r in cluster.shards(job["id"])}) == 2


def test_a_worker_killed_mid_shard_costs_that_shard_only(one_worker, cluster):
    _, alone = one_worker
    killed: dict[str, str] = {}
    with worker(cluster.tmp, cluster.env, name="worker-a"), \
            worker(cluster.tmp, cluster.env, "--shards-only", name="worker-b") as b:

        def kill_b_mid_shard(job):
            if killed or job["status"] != "running":
                return
            owner = cluster.job_worker(job["id"])
            for row in cluster.shards(job["id"]):
                pid = int(row.claimed_by.rsplit("/", 1)[1]) if row.claimed_by else 0
                if row.status == "running" and row.claimed_by != owner and _in_group(pid, b.pid):
                    os.killpg(b.pid, signal.SIGKILL)  # the worker and its pool, mid-shard
                    killed.update(key=row.key, by=row.claimed_by)
                    return

        job, result = cluster.run(watch=kill_b_mid_shard)
    assert killed, "worker-b never held a shard\n" + cluster.logs()
    assert job["attempts"] == 1  # the job itself was never lost
    assert _table(result) == _table(alone)
    rows = {r.key: r for r in cluster.shards(job["id"])}
    lost = rows[killed["key"]]
    assert lost.attempts == 2 and lost.claimed_by != killed["by"]  # run again by another worker
    assert all(r.attempts == 1 for k, r in rows.items() if k != killed["key"])  # nothing else re-run


def test_empirical_layers_split_over_two_workers_give_the_same_table(cluster):
    """`empirical`: a shard per layer (RTN), in rounds of 8 layers."""
    spec = {**JOB, "method": "empirical", "method_params": {}, "weight_bits": [3, 8]}  # 2 widths: time
    with worker(cluster.tmp, cluster.env, name="worker-a"):
        _, alone = cluster.run(spec=spec)
    with worker(cluster.tmp, cluster.env, name="worker-a"), \
            worker(cluster.tmp, cluster.env, "--shards-only", name="worker-b"):
        job, result = cluster.run(spec=spec)
    layers = len(result["layers"])
    assert alone["sensitivity"]["workers"] == 1 and alone["sensitivity"]["shards"]["shards"] == layers
    assert result["sensitivity"]["workers"] == 2, cluster.logs()
    assert _table(result) == _table(alone)


def _in_group(pid: int, group: int) -> bool:
    try:
        return os.getpgid(pid) == group
    except (ProcessLookupError, PermissionError):
        return False
