"""The tasks: run a job by id, and take shards of a job's sensitivity stage.
`run_job` re-reads the row, is safe to deliver twice (a claim fences every write),
retries with backoff only on transient database or broker failures, and records
every other failure on the job. `run_shard` claims shards of a running job until
none is left (service.worker.shards); a message for a job with nothing left to
take costs one query."""

from __future__ import annotations

import logging
import random

from service import crud
from service.broker import RUN_JOB, RUN_SHARD
from service.db.session import session_factory
from service.worker.celery_app import app, settings
from service.worker.runner import TRANSIENT, Busy, JobRunner, worker_name

log = logging.getLogger(__name__)


def backoff_s(retries: int) -> float:
    """5 s, 10 s, 20 s, … capped at 5 minutes, with jitter."""
    return min(300.0, 5.0 * 2 ** retries) * random.uniform(0.8, 1.2)


@app.task(name=RUN_JOB, bind=True, max_retries=settings.max_transient_retries)
def run_job(self, job_id: str) -> str:
    runner = JobRunner(settings, job_id, self.request.id, self.request.hostname, app)
    try:
        return runner.run()
    except Busy:
        # the same delivery is running elsewhere and heartbeating: look again later
        raise self.retry(countdown=settings.heartbeat_timeout_s) from None
    except TRANSIENT as exc:
        if self.request.retries >= self.max_retries:
            _give_up(runner, exc)
            raise
        log.warning("job %s: transient failure (%s); retry %d of %d", job_id, exc,
                    self.request.retries + 1, self.max_retries)
        _release(runner, f"retrying after a transient failure: {exc}")
        raise self.retry(exc=exc, countdown=backoff_s(self.request.retries)) from None


@app.task(name=RUN_SHARD, bind=True, max_retries=settings.max_transient_retries)
def run_shard(self, job_id: str) -> str:
    from service.worker.shards import take_shards  # loads torch, as a job does

    try:
        ran = take_shards(settings, session_factory(settings.db_url), job_id,
                          worker_name(self.request.hostname))
    except TRANSIENT as exc:
        raise self.retry(exc=exc, countdown=backoff_s(self.request.retries)) from None
    return f"{ran} shards"


def _release(runner: JobRunner, message: str) -> None:
    if runner.attempt:
        try:
            with runner.sessions() as session:
                crud.release_job(session, runner.job_id, runner.task_id, runner.attempt,
                                 message)
        except TRANSIENT:
            pass  # the reaper will find it once its heartbeat is stale


def _give_up(runner: JobRunner, exc: Exception) -> None:
    try:
        with runner.sessions() as session:
            crud.finish_job(session, runner.job_id, runner.task_id, runner.attempt, "failed",
                            message="failed", error=f"gave up after repeated transient "
                                                    f"failures: {exc}")
    except TRANSIENT:
        log.error("job %s: could not record the failure; the reaper will", runner.job_id)
