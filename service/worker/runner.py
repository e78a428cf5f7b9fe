"""One delivery of a job to a worker: claim the row, run the pipeline with a
progress callback that writes to the database at a bounded rate and stops the
job when it is cancelled, heartbeat meanwhile, and record how it ended."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from celery.exceptions import SoftTimeLimitExceeded

from sensitivity.sources import DataSource, ModelSource
from service import crud, storage
from service.config import Settings
from service.db.models import Job, utcnow
from service.db.session import session_factory
from service.worker.sources import job_sources
from workers.spec import JobSpec
from workers.stages import overall_progress

log = logging.getLogger(__name__)

# failures worth retrying: the database or the broker was briefly unreachable
TRANSIENT = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
             redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
             kombu.exceptions.OperationalError, ConnectionError, TimeoutError)


class JobCancelled(Exception):
    """Raised from the progress callback when the job was cancelled."""


class JobLost(Exception):
    """This worker no longer holds the job (it was reaped or taken over)."""


def _user_errors() -> tuple[type[Exception], ...]:
    """Failures that are the request's, not the service's: bad values, and the
    pipeline's JobError (looked up only once the pipeline is loaded)."""
    pipeline = sys.modules.get("workers.pipeline")
    return (ValueError, pipeline.JobError) if pipeline is not None else (ValueError,)


class Busy(Exception):
    """Another worker is running this delivery and still heartbeating."""


class ProgressWriter:
    """The pipeline's `progress(stage, fraction, message)`: at most one write per
    interval (stage changes always), raising JobCancelled or JobLost."""

    def __init__(self, sessions, job_id: uuid.UUID, task_id: str, attempt: int,
                 interval_s: float):
        self.sessions, self.job_id, self.task_id, self.attempt = (
            sessions, job_id, task_id, attempt)
        self.interval_s = interval_s
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self.stage = ""
        self.progress = 0.0
        self.last = 0.0

    def check(self) -> None:
        if self.lost.is_set():
            raise JobLost(str(self.job_id))
        if self.cancelled.is_set():
            raise JobCancelled(str(self.job_id))

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        self.check()
        now = time.monotonic()
        overall = overall_progress(stage, fraction)
        if overall is not None:
            self.progress = max(self.progress, overall)
        if stage == self.stage and fraction < 1.0 and now - self.last < self.interval_s:
            return
        self.stage, self.last = stage, now
        try:
            with self.sessions() as session:
                flag = crud.write_progress(
                    session, self.job_id, self.task_id, self.attempt, stage=stage,
                    stage_progress=float(fraction), progress=self.progress, message=message)
        except TRANSIENT:
            log.warning("job %s: progress not written (database unreachable)", self.job_id)
            return
        self.note(flag)
        self.check()

    def note(self, flag: bool | None) -> None:
        if flag is None:
            self.lost.set()
        elif flag:
            self.cancelled.set()


class Heartbeat(threading.Thread):
    """Marks the job alive while the pipeline runs, even inside a long stage."""

    def __init__(self, writer: ProgressWriter, interval_s: float):
        super().__init__(daemon=True, name=f"heartbeat-{writer.job_id}")
        self.writer, self.interval_s = writer, interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        w = self.writer
        while not self.stopped.wait(self.interval_s):
            try:
                with w.sessions() as session:
                    w.note(crud.heartbeat(session, w.job_id, w.task_id, w.attempt))
            except Exception:  # noqa: BLE001 (keep beating; the reaper judges silence)
                log.warning("job %s: heartbeat failed", w.job_id, exc_info=True)


def worker_name(hostname: str | None) -> str:
    """How a worker process is named on the rows it claims: host/pid."""
    return f"{hostname or socket.gethostname()}/{os.getpid()}"


class JobRunner:
    def __init__(self, settings: Settings, job_id: str, task_id: str, hostname: str | None,
                 app=None):
        """`app`: the Celery app that sends the job's shards to other workers (when
        `settings.sharding`); without one the job computes them all itself."""
        self.settings = settings
        self.job_id = uuid.UUID(job_id)
        self.task_id = task_id
        self.worker = worker_name(hostname)
        self.app = app
        self.sessions = session_factory(settings.db_url)
        self.attempt = 0

    def run(self) -> str:
        """How the delivery ended: succeeded, failed, cancelled, or why it did not run."""
        stale = utcnow() - timedelta(seconds=self.settings.heartbeat_timeout_s)
        with self.sessions() as session:
            claim = crud.claim_job(session, self.job_id, self.task_id, self.worker, stale,
                                   self.settings.max_attempts)
        if claim.outcome == "busy":
            raise Busy(str(self.job_id))
        if claim.outcome != "run":
            log.info("job %s: delivery %s not run (%s)", self.job_id, self.task_id,
                     claim.outcome)
            return claim.outcome
        self.attempt = claim.attempt
        writer = ProgressWriter(self.sessions, self.job_id, self.task_id, self.attempt,
                                self.settings.progress_interval_s)
        beat = Heartbeat(writer, self.settings.heartbeat_interval_s)
        beat.start()
        try:
            return self._run(claim.job, writer)
        finally:
            beat.stopped.set()

    def _run(self, job: Job, writer: ProgressWriter) -> str:
        started = time.perf_counter()
        try:
            spec = JobSpec.model_validate(job.spec)
            uploads = self._uploads(job, spec)
            result = self._pipeline(spec, writer, *uploads)
            payload = result.model_dump(mode="json")
            self._record_sensitivity(job, spec, payload)
            artifact, note = self._artifact()
        except JobCancelled:
            return self._end("cancelled", "cancelled", None, started)
        except JobLost:
            log.warning("job %s: lost to another worker or the reaper; stopping", job.id)
            return "lost"
        except SoftTimeLimitExceeded:
            return self._end("failed", "failed", f"time limit of "
                             f"{self.settings.job_soft_time_limit_s} s exceeded", started)
        except TRANSIENT:
            raise
        except Exception as exc:
            if isinstance(exc, _user_errors()):
                return self._end("failed", "failed", str(exc) or type(exc).__name__, started)
            self._end("failed", "failed", f"internal error: {type(exc).__name__}: {exc}",
                      started)
            raise
        return self._end("succeeded", "done" + note, None, started, result=payload,
                         timings=self._timings(job, started, payload), artifact=artifact)

    def _pipeline(self, spec: JobSpec, writer: ProgressWriter, model: ModelSource | None,
                  data: DataSource | None):
        from workers.pipeline import run_job

        writer.check()
        folder = storage.job_dir(self.settings, self.job_id) / "artifact"
        folder.mkdir(parents=True, exist_ok=True)
        shards = None
        if self.settings.sharding and self.app is not None:
            from service.worker.shards import DistributedShards

            shards = DistributedShards(self.settings, self.sessions, self.app, self.job_id, self.worker)
        return run_job(spec, writer, artifact_dir=folder, model_source=model, data_source=data,
                       shards=shards)

    def _uploads(self, job: Job, spec: JobSpec) -> tuple[ModelSource | None, DataSource | None]:
        return job_sources(self.settings, self.sessions, job, spec)

    def _end(self, status: str, message: str, error: str | None, started: float, *,
             result: dict[str, Any] | None = None, timings: dict[str, Any] | None = None,
             artifact: str | None = None) -> str:
        """Record the outcome, retrying briefly through a database hiccup."""
        if timings is None:
            timings = {"run_s": round(time.perf_counter() - started, 3)}
        for delay in (0.5, 2.0, 5.0, None):
            try:
                with self.sessions() as session:
                    held = crud.finish_job(session, self.job_id, self.task_id, self.attempt,
                                           status, message=message, error=error, result=result,
                                           timings=timings, artifact_path=artifact)
                if not held:
                    log.warning("job %s: finished as %s but no longer held", self.job_id, status)
                return status
            except TRANSIENT:
                if delay is None:
                    raise
                time.sleep(delay)
        return status

    def _timings(self, job: Job, started: float, payload: dict[str, Any]) -> dict[str, Any]:
        run_s = time.perf_counter() - started
        queued_s = (job.started_at - job.created_at).total_seconds() if job.started_at else 0.0
        sensitivity = payload.get("sensitivity", {})
        cache = {k: v for k, v in sensitivity.items() if "cache" in k.lower()}
        return {
            "queued_s": round(queued_s, 3),
            "run_s": round(run_s, 3),
            "stages": payload.get("timings", {}),
            "sensitivity_s": sensitivity.get("seconds"),
            "sensitivity_cache": cache or "not reported by the pipeline",
            "attempt": self.attempt,
        }

    def _record_sensitivity(self, job: Job, spec: JobSpec, payload: dict[str, Any]) -> None:
        meta = payload.get("sensitivity", {})
        key = meta.get("cache_key") or hashlib.sha256(json.dumps(
            [spec.model, spec.method, spec.method_params, spec.quant.model_dump(),
             spec.weight_bits, spec.seed], sort_keys=True, default=str).encode()).hexdigest()
        hit = bool(meta.get("cache_hit") or meta.get("cached"))
        try:
            with self.sessions() as session:
                crud.record_sensitivity(session, key=str(key)[:128], model=spec.model,
                                        method=spec.method, params=spec.method_params,
                                        seconds=float(meta.get("seconds") or 0.0), hit=hit,
                                        job_id=job.id)
        except TRANSIENT:
            log.warning("job %s: sensitivity cache entry not recorded", job.id)

    def _artifact(self) -> tuple[str | None, str]:
        """(path of the zipped artifact the pipeline wrote, note for the job message)."""
        folder = storage.job_dir(self.settings, self.job_id) / "artifact"
        try:
            archive = shutil.make_archive(str(folder), "zip", root_dir=folder)
        except (JobCancelled, JobLost):
            raise
        except Exception as exc:  # noqa: BLE001 (reported on the job, the result stands)
            log.exception("job %s: artifact not written", self.job_id)
            return None, f"; artifact not written: {type(exc).__name__}: {exc}"
        finally:
            storage.remove(folder)
        return storage.relative(self.settings, Path(archive)), ""
