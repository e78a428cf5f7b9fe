"""One job, many workers: the sensitivity stage's probe shards (`sensitivity.shards`)
through the database and the broker.

The job's worker (`DistributedShards`, the pipeline's shard executor) writes a
round's shards as rows (`job_shards`), sends one `bitalloc.run_shard` message per
shard but the one it starts on to the shard queue, and then claims and computes
shards itself like any other worker, so a job never waits on a worker that is not
there. Another worker that gets a message (`take_shards`) loads the job's model once
per process (kept for the job's next rounds and for later jobs on the same model and
data), claims shards of the job until none is left, heartbeats the one it holds, and
stores each result. A shard whose claimant stops heartbeating is claimed again by
whoever looks next — the job's worker does while it waits — so a killed worker costs
the shard it held. Results are read back in the plan's order and merged by the
pipeline as if computed here. Imported only by the task bodies (it loads torch)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

import kombu.exceptions
import redis.exceptions
from celery import Celery

from sensitivity.memory import release_freed_memory
from sensitivity.shards import Shard, ShardExecutor, ShardResult, shard_from_json
from service import broker, crud
from service.config import Settings
from service.db.models import utcnow

log = logging.getLogger(__name__)

BROKER_DOWN = (kombu.exceptions.OperationalError, redis.exceptions.ConnectionError,
               redis.exceptions.TimeoutError, ConnectionError, TimeoutError)


class ShardFailed(RuntimeError):
    """A shard failed on every attempt it was given."""


class ShardLease(threading.Thread):
    """Heartbeats one claimed shard while it is computed."""

    def __init__(self, sessions, claim: crud.ShardClaim, interval_s: float):
        super().__init__(daemon=True, name=f"shard-{claim.key}")
        self.sessions, self.claim, self.interval_s = sessions, claim, interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                with self.sessions() as session:
                    if not crud.shard_heartbeat(session, self.claim.id, self.claim.token):
                        return  # taken over: the result, if ours is first, still counts
            except Exception:  # noqa: BLE001 (keep beating; silence is judged by others)
                log.warning("shard %s: heartbeat failed", self.claim.key, exc_info=True)


def _stale_before(settings: Settings):
    return utcnow() - timedelta(seconds=settings.heartbeat_timeout_s)


def compute_claimed(settings: Settings, sessions, claim: crud.ShardClaim, worker: str,
                    compute: Callable[[Shard], ShardResult]) -> ShardResult:
    """Compute a claimed shard under its lease and store the result; a failure gives
    the shard back with its error (another attempt may succeed) and is raised."""
    lease = ShardLease(sessions, claim, settings.heartbeat_interval_s)
    lease.start()
    try:
        result = compute(shard_from_json(claim.payload))
    except Exception as exc:
        with sessions() as session:
            crud.fail_shard(session, claim.id, claim.token, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        lease.stopped.set()
    result.worker = worker
    with sessions() as session:
        crud.complete_shard(session, claim.id, worker, result.to_json(), result.seconds)
    return result


class DistributedShards(ShardExecutor):
    """The job's side: plan, send, take part, wait, read back."""

    name = "distributed"

    def __init__(self, settings: Settings, sessions, app: Celery, job_id: uuid.UUID, worker: str):
        super().__init__()
        self.settings, self.sessions, self.app = settings, sessions, app
        self.job_id, self.worker = job_id, worker

    def run(self, shards, compute, done=lambda n: None):
        if not shards:
            return []
        s = self.settings
        keys = [shard.key for shard in shards]
        with self.sessions() as session:
            crud.plan_shards(session, self.job_id, [(shard.key, shard.to_json()) for shard in shards])
        try:
            broker.send_shards(self.app, s, str(self.job_id), len(shards) - 1)
        except BROKER_DOWN as exc:  # only help is lost: this worker runs what nobody takes
            log.warning("job %s: shard messages not sent (%s); computing them here", self.job_id, exc)
        finished = -1
        while True:
            with self.sessions() as session:
                claim = crud.claim_shard(session, self.job_id, self.worker, _stale_before(s),
                                         s.max_attempts, keys)
            if claim is not None:
                compute_claimed(s, self.sessions, claim, self.worker, compute)
            with self.sessions() as session:
                states = crud.shard_states(session, self.job_id, keys)
            n = sum(state.status == "done" for state in states.values())
            if n != finished or claim is None:
                finished = n
                done(n)  # progress, and where a cancelled or lost job stops waiting
            if n == len(keys):
                break
            self._check_exhausted(states)
            if claim is None:
                time.sleep(s.shard_poll_s)
        with self.sessions() as session:
            states = crud.shard_states(session, self.job_id, keys, with_results=True)
        results = [ShardResult.from_json(states[key].result) for key in keys]
        self.workers.update(r.worker for r in results)
        self.shards_run += len(results)
        return results

    def _check_exhausted(self, states: dict[str, crud.ShardState]) -> None:
        stale = _stale_before(self.settings)
        for key, st in states.items():
            silent = st.status == "running" and (st.heartbeat_at is None or st.heartbeat_at < stale)
            if st.attempts >= self.settings.max_attempts and (st.status == "pending" or silent):
                raise ShardFailed(f"shard {key} of the sensitivity stage failed on all {st.attempts} "
                                  f"attempts: {st.error or 'its workers stopped responding'}")


# --- another worker's side --------------------------------------------------------------

_loaded: dict[str, object] = {}  # the model this process holds for shards, and its runners


def _runner(settings: Settings, sessions, job_id: uuid.UUID, payload: dict):
    """This process's runner for the job's shards with this payload's layers and engine.
    The model is loaded once per process and kept for the next jobs on the same model
    and data (a built-in name, or the same uploads); another model replaces it."""
    from sensitivity.estimators.remote import runner_for, runner_key

    with sessions() as session:
        job = crud.load_job(session, job_id)
    if job is None:
        raise ValueError(f"job {job_id} is gone")
    model = (job.spec.get("model"), job.model_id, job.dataset_id)
    if _loaded.get("model") != model:
        _loaded.clear()
        _loaded.update(model=model, bundle=_load_bundle(settings, sessions, job), runners={})
    runners = _loaded["runners"]
    key = runner_key(payload)
    if key not in runners:
        runners[key] = runner_for(_loaded["bundle"], payload)
    return runners[key]


def _load_bundle(settings: Settings, sessions, job):
    from sensitivity.models import load_bundle
    from service.worker.sources import job_sources
    from workers.spec import JobSpec

    spec = JobSpec.model_validate(job.spec)
    model, data = job_sources(settings, sessions, job, spec)
    started = time.perf_counter()
    bundle = load_bundle(spec.model, model, data)
    log.info("job %s: model %s loaded for its shards in %.1f s", job.id, spec.model,
             time.perf_counter() - started)
    return bundle


def take_shards(settings: Settings, sessions, job_id: str, worker: str) -> int:
    """Claim and compute shards of the job until none is left; how many this ran."""
    ident = uuid.UUID(job_id)
    ran = 0
    while True:
        with sessions() as session:
            payload = crud.peek_shard(session, ident, _stale_before(settings), settings.max_attempts)
        if payload is None:
            return ran
        _runner(settings, sessions, ident, payload)  # before claiming: loading can outlast a shard
        with sessions() as session:
            claim = crud.claim_shard(session, ident, worker, _stale_before(settings), settings.max_attempts)
        if claim is None:
            return ran
        runner = _runner(settings, sessions, ident, claim.payload)  # the claimed one's (cached)
        compute_claimed(settings, sessions, claim, worker, runner)
        release_freed_memory()
        ran += 1
