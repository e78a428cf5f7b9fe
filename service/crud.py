"""Persistence: every query and every commit of the service and its workers.

Routes and tasks call these functions; nothing else touches the ORM. Worker
writes are fenced by (task_id, attempts): a worker that lost its job (reaped,
or taken over after a redelivery) can no longer change it."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.auth import KeyCache, display_prefix, hash_key, new_key
from service.db.models import (
    ApiKey,
    Dataset,
    Job,
    JobShard,
    SensitivityCacheEntry,
    StoredModel,
    Tenant,
    utcnow,
)
from service.job_status import ACTIVE, FINISHED


class Conflict(Exception):
    """The request clashes with what is stored (e.g. an idempotency key reused)."""


class BadCursor(ValueError):
    """A pagination cursor this service did not issue."""


# --- tenants and keys -----------------------------------------------------------


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        try:
            session.commit()
        except IntegrityError:  # created concurrently
            session.rollback()
            tenant = session.scalars(select(Tenant).where(Tenant.name == name)).one()
    return tenant


def create_api_key(session: Session, tenant_name: str, label: str = "") -> tuple[ApiKey, str]:
    """A new key for the tenant (created if needed); the plain key is returned once."""
    tenant = get_or_create_tenant(session, tenant_name)
    key = new_key()
    row = ApiKey(tenant_id=tenant.id, key_hash=hash_key(key), prefix=display_prefix(key),
                 label=label)
    session.add(row)
    session.commit()
    return row, key


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    return tenant_for_key_hash(session, hash_key(key))


def tenant_for_key_hash(session: Session, key_hash: str) -> Tenant | None:
    return session.scalar(
        select(Tenant).join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    )


def list_api_keys(session: Session) -> list[tuple[ApiKey, str]]:
    rows = session.execute(
        select(ApiKey, Tenant.name).join(Tenant).order_by(Tenant.name, ApiKey.created_at))
    return [(key, name) for key, name in rows]


def revoke_api_key(session: Session, prefix: str) -> int:
    """Revoke the live keys starting with `prefix`; returns how many."""
    result = session.execute(
        update(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow()))
    session.commit()
    KeyCache.forget_all()
    return result.rowcount


# --- uploaded models and datasets -----------------------------------------------


def add_upload(session: Session, row: StoredModel | Dataset) -> StoredModel | Dataset:
    """Insert a model or dataset row; a name the tenant already uses is a Conflict."""
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        kind = "model" if isinstance(row, StoredModel) else "dataset"
        raise Conflict(f"a {kind} named {row.name!r} already exists") from None
    return row


def upload_name_taken(session: Session, cls: type[StoredModel | Dataset], tenant_id: uuid.UUID,
                      name: str) -> bool:
    return session.scalar(
        select(func.count()).select_from(cls).where(cls.tenant_id == tenant_id, cls.name == name)
    ) > 0


def list_uploads(session: Session, cls: type[StoredModel | Dataset], tenant_id: uuid.UUID,
                 limit: int, offset: int) -> tuple[list, int]:
    where = cls.tenant_id == tenant_id
    rows = session.scalars(select(cls).where(where).order_by(cls.created_at.desc(), cls.id)
                           .limit(limit).offset(offset)).all()
    count = session.scalar(select(func.count()).select_from(cls).where(where))
    return list(rows), count


def find_upload(session: Session, cls: type[StoredModel | Dataset], tenant_id: uuid.UUID,
                ref: str) -> StoredModel | Dataset | None:
    """By id or by name, within the tenant."""
    try:
        ident = uuid.UUID(ref)
    except ValueError:
        return session.scalar(select(cls).where(cls.tenant_id == tenant_id, cls.name == ref))
    return session.scalar(select(cls).where(cls.tenant_id == tenant_id, cls.id == ident))


def get_owned(session: Session, cls: type, tenant_id: uuid.UUID, ident: uuid.UUID):
    """The row if this tenant owns it, else None (the caller answers 404 either way)."""
    return session.scalar(select(cls).where(cls.id == ident, cls.tenant_id == tenant_id))


# what a status read may ask for besides the job's own columns: whether a result and
# an artifact exist, without reading the result (it can be large)
_JOB_FLAGS = {"has_result": Job.result.is_not(None),
              "has_artifact": Job.artifact_path.is_not(None)}


@lru_cache(maxsize=16)
def _job_fields_query(fields: tuple[str, ...]):
    columns = [_JOB_FLAGS[f].label(f) if f in _JOB_FLAGS else getattr(Job, f) for f in fields]
    return select(*columns).where(Job.id == bindparam("job_id"),
                                  Job.tenant_id == bindparam("tenant_id"))


def job_fields(conn: Connection | Session, tenant_id: uuid.UUID, job_id: uuid.UUID,
               fields: tuple[str, ...]) -> dict[str, Any] | None:
    """The named columns (and `has_result`, `has_artifact`) of the tenant's job, or None
    when the tenant has no such job: the status poll's one small query (on a plain
    connection it skips the ORM session, half its cost)."""
    row = conn.execute(_job_fields_query(fields),
                       {"job_id": job_id, "tenant_id": tenant_id}).mappings().first()
    return None if row is None else dict(row)


# --- jobs: the API side ---------------------------------------------------------


def create_job(session: Session, tenant_id: uuid.UUID, spec: dict[str, Any], *,
               model_id: uuid.UUID | None, dataset_id: uuid.UUID | None,
               idempotency_key: str | None, request_hash: str) -> tuple[Job, bool]:
    """(job, created). With an idempotency key seen before, the earlier job is
    returned; the same key with a different request is a Conflict."""
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is not None:
            return _same_request(existing, request_hash), False
    job = Job(tenant_id=tenant_id, spec=spec, model_id=model_id, dataset_id=dataset_id,
              idempotency_key=idempotency_key, request_hash=request_hash,
              task_id=str(uuid.uuid4()), timings={}, message="queued")
    session.add(job)
    try:
        session.commit()
    except IntegrityError:  # the same key submitted concurrently
        session.rollback()
        existing = _by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is None:
            raise
        return _same_request(existing, request_hash), False
    return job, True


def _by_idempotency_key(session: Session, tenant_id: uuid.UUID, key: str | None) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id,
                                            Job.idempotency_key == key))


def find_by_idempotency_key(session: Session, tenant_id: uuid.UUID, key: str) -> Job | None:
    return _by_idempotency_key(session, tenant_id, key)


def count_active_jobs(session: Session, tenant_id: uuid.UUID) -> int:
    """The tenant's jobs queued or running (what the per-tenant cap counts)."""
    return session.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))) or 0


def _same_request(job: Job, request_hash: str) -> Job:
    if job.request_hash != request_hash:
        raise Conflict("this Idempotency-Key was used for a different request "
                       f"(job {job.id}); use a new key for a new job")
    return job


def mark_enqueued(session: Session, job: Job) -> None:
    job.enqueued_at = utcnow()
    session.commit()


def delete_job(session: Session, job: Job) -> None:
    """Undo a submission the broker never received."""
    session.delete(job)
    session.commit()


def list_jobs(session: Session, tenant_id: uuid.UUID, *, statuses: Sequence[str] | None,
              created_after: datetime | None, created_before: datetime | None, limit: int,
              cursor: str | None) -> tuple[list[Job], int, str | None]:
    """Newest first; (jobs, count of all matches, cursor of the next page or None)."""
    where = [Job.tenant_id == tenant_id]
    if statuses:
        where.append(Job.status.in_(statuses))
    if created_after is not None:
        where.append(Job.created_at >= created_after)
    if created_before is not None:
        where.append(Job.created_at < created_before)
    count = session.scalar(select(func.count()).select_from(Job).where(*where))
    if cursor is not None:
        at, ident = decode_cursor(cursor)
        where.append(or_(Job.created_at < at, and_(Job.created_at == at, Job.id < ident)))
    jobs = list(session.scalars(select(Job).where(*where)
                                .order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return jobs, count, encode_cursor(jobs[-1]) if more else None


def encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), str(job.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, ident = json.loads(raw)
        parsed = datetime.fromisoformat(at)
        if parsed.tzinfo is None:
            raise ValueError("naive time")
        return parsed, uuid.UUID(ident)
    except (ValueError, TypeError) as exc:
        raise BadCursor("invalid cursor: pass next_cursor from a previous page") from exc


def request_cancel(session: Session, job: Job) -> Job:
    """A queued job is cancelled at once; a running one when its worker next
    reports progress. Finished jobs are left as they are (the caller decides)."""
    now = utcnow()
    if job.status == "queued":
        session.execute(update(Job).where(Job.id == job.id, Job.status == "queued").values(
            status="cancelled", cancel_requested=True, finished_at=now,
            message="cancelled before it started"))
    elif job.status == "running":
        session.execute(update(Job).where(Job.id == job.id, Job.status == "running").values(
            cancel_requested=True, message="cancelling…"))
    session.commit()
    session.refresh(job)
    return job


def job_counts(session: Session) -> dict[str, int]:
    """Jobs per status across tenants (for /metrics)."""
    return dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())


# --- jobs: the worker side ------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """What a delivered task may do: run (with its fence) or why not."""

    outcome: str  # "run" | "finished" | "superseded" | "busy" | "missing" | "exhausted"
    job: Job | None = None
    attempt: int = 0


def claim_job(session: Session, job_id: uuid.UUID, task_id: str, worker: str,
              stale_before: datetime, max_attempts: int) -> Claim:
    """Take a job for this delivery: a queued job, or a running one whose worker
    stopped heartbeating (a redelivered message after a worker died)."""
    now = utcnow()
    result = session.execute(
        update(Job).where(
            Job.id == job_id, Job.task_id == task_id, Job.cancel_requested.is_(False),
            Job.attempts < max_attempts,
            or_(Job.status == "queued",
                and_(Job.status == "running",
                     or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before))),
        ).values(status="running", attempts=Job.attempts + 1, worker=worker[:200],
                 started_at=func.coalesce(Job.started_at, now), heartbeat_at=now,
                 message="started", error=None)
    )
    session.commit()
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return Claim("missing")
    if result.rowcount == 1:
        return Claim("run", job, job.attempts)
    if job.status in FINISHED:
        return Claim("finished", job)
    if job.task_id != task_id:
        return Claim("superseded", job)
    if job.cancel_requested:
        _finish(session, job_id, job.task_id, job.attempts, "cancelled",
                message="cancelled", error=None)
        return Claim("finished", job)
    if job.attempts >= max_attempts:
        _finish(session, job_id, job.task_id, job.attempts, "failed", message="failed",
                error=f"gave up after {job.attempts} attempts")
        return Claim("exhausted", job)
    return Claim("busy", job)


def _fence(job_id: uuid.UUID, task_id: str, attempt: int):
    return (Job.id == job_id, Job.task_id == task_id, Job.attempts == attempt,
            Job.status == "running")


def write_progress(session: Session, job_id: uuid.UUID, task_id: str, attempt: int, *,
                   stage: str, stage_progress: float, progress: float, message: str
                   ) -> bool | None:
    """Store progress and heartbeat; returns whether cancel was requested, or
    None when this worker no longer holds the job."""
    result = session.execute(update(Job).where(*_fence(job_id, task_id, attempt)).values(
        stage=stage[:50], stage_progress=stage_progress, progress=progress,
        message=message[:500], heartbeat_at=utcnow()))
    session.commit()
    if result.rowcount != 1:
        return None
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def heartbeat(session: Session, job_id: uuid.UUID, task_id: str, attempt: int) -> bool | None:
    """Like write_progress without progress: cancel requested, or None when lost."""
    result = session.execute(update(Job).where(*_fence(job_id, task_id, attempt))
                             .values(heartbeat_at=utcnow()))
    session.commit()
    if result.rowcount != 1:
        return None
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def finish_job(session: Session, job_id: uuid.UUID, task_id: str, attempt: int, status: str, *,
               message: str, error: str | None = None, result: dict[str, Any] | None = None,
               timings: dict[str, Any] | None = None, artifact_path: str | None = None) -> bool:
    """Record the end of an attempt; False when this worker no longer held the job."""
    return _finish(session, job_id, task_id, attempt, status, message=message, error=error,
                   result=result, timings=timings, artifact_path=artifact_path)


def _finish(session: Session, job_id, task_id, attempt, status, *, message, error,
            result=None, timings=None, artifact_path=None) -> bool:
    values: dict[str, Any] = {"status": status, "message": message[:500], "error": error,
                              "finished_at": utcnow(), "heartbeat_at": utcnow()}
    if status == "succeeded":
        values.update(progress=1.0, stage_progress=1.0, result=result)
    if timings is not None:
        values["timings"] = timings
    if artifact_path is not None:
        values["artifact_path"] = artifact_path
    fence = (Job.id == job_id, Job.task_id == task_id, Job.attempts == attempt,
             Job.status.in_(ACTIVE))
    outcome = session.execute(update(Job).where(*fence).values(**values))
    session.commit()
    return outcome.rowcount == 1


def release_job(session: Session, job_id: uuid.UUID, task_id: str, attempt: int,
                message: str) -> bool:
    """Put a running job back to queued for a retry of the same delivery; the
    attempt does not count (the failure was the infrastructure's)."""
    outcome = session.execute(update(Job).where(*_fence(job_id, task_id, attempt)).values(
        status="queued", attempts=Job.attempts - 1, message=message[:500], heartbeat_at=None))
    session.commit()
    return outcome.rowcount == 1


def load_job(session: Session, job_id: uuid.UUID) -> Job | None:
    return session.get(Job, job_id, populate_existing=True)


def load_upload(session: Session, cls: type[StoredModel | Dataset], ident: uuid.UUID | None):
    return None if ident is None else session.get(cls, ident)


def reap(session: Session, *, heartbeat_timeout_s: float, requeue_queued_after_s: float,
         max_attempts: int) -> list[tuple[uuid.UUID, str]]:
    """Jobs whose worker stopped heartbeating: cancelled if cancel was asked,
    failed when out of attempts, else re-queued with a new delivery id. Queued
    jobs whose message was lost are re-sent. Returns (job id, task id) to send."""
    now = utcnow()
    stale = now - timedelta(seconds=heartbeat_timeout_s)
    to_send: list[tuple[uuid.UUID, str]] = []
    dead = session.scalars(select(Job).where(Job.status == "running", or_(
        Job.heartbeat_at.is_(None), Job.heartbeat_at < stale))).all()
    for job in dead:
        fence = (Job.id == job.id, Job.task_id == job.task_id, Job.attempts == job.attempts,
                 Job.status == "running", or_(Job.heartbeat_at.is_(None),
                                              Job.heartbeat_at < stale))
        where = f"worker stopped responding during attempt {job.attempts} of {max_attempts}"
        if job.stage:
            where += f" (stage {job.stage})"
        if job.cancel_requested:
            values = {"status": "cancelled", "finished_at": now, "message": "cancelled"}
        elif job.attempts >= max_attempts:
            values = {"status": "failed", "finished_at": now, "message": "failed",
                      "error": where + "; giving up"}
        else:
            values = {"status": "queued", "task_id": str(uuid.uuid4()), "enqueued_at": now,
                      "heartbeat_at": None, "message": where + "; re-queued"}
        if session.execute(update(Job).where(*fence).values(**values)).rowcount == 1 \
                and values["status"] == "queued":
            to_send.append((job.id, values["task_id"]))
    lost = session.scalars(select(Job).where(Job.status == "queued", or_(
        Job.enqueued_at < now - timedelta(seconds=requeue_queued_after_s),
        and_(Job.enqueued_at.is_(None), Job.created_at < now - timedelta(seconds=60))))).all()
    for job in lost:
        task_id = str(uuid.uuid4())
        if session.execute(update(Job).where(Job.id == job.id, Job.task_id == job.task_id,
                                             Job.status == "queued")
                           .values(task_id=task_id, enqueued_at=now)).rowcount == 1:
            to_send.append((job.id, task_id))
    session.commit()
    return to_send


# --- shards of a job's sensitivity stage (service.worker.shards) ----------------------


def plan_shards(session: Session, job_id: uuid.UUID, shards: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Make sure a row exists for each (key, payload); a done shard stays done (a job's
    second attempt reuses it), one stored with another payload starts over."""
    keys = [key for key, _ in shards]
    existing = {row.key: row for row in session.scalars(
        select(JobShard).where(JobShard.job_id == job_id, JobShard.key.in_(keys)))}
    for key, payload in shards:
        row = existing.get(key)
        if row is None:
            session.add(JobShard(job_id=job_id, key=key, payload=payload))
        elif row.payload != payload:
            row.payload, row.status, row.result, row.error, row.attempts = payload, "pending", None, None, 0
    try:
        session.commit()
    except IntegrityError:  # planned at the same time by another delivery: theirs stand
        session.rollback()


@dataclass(frozen=True)
class ShardClaim:
    id: uuid.UUID
    key: str
    payload: dict[str, Any]
    token: str


def _claimable(job_id: uuid.UUID, stale_before: datetime, max_attempts: int) -> list:
    """A shard anyone may take: pending, or its claimant silent; its job running."""
    live = select(Job.id).where(Job.id == job_id, Job.status == "running", Job.cancel_requested.is_(False))
    return [JobShard.job_id == job_id, JobShard.job_id.in_(live), JobShard.attempts < max_attempts,
            or_(JobShard.status == "pending",
                and_(JobShard.status == "running",
                     or_(JobShard.heartbeat_at.is_(None), JobShard.heartbeat_at < stale_before)))]


def claim_shard(session: Session, job_id: uuid.UUID, worker: str, stale_before: datetime,
                max_attempts: int, keys: Sequence[str] | None = None) -> ShardClaim | None:
    """Take one shard of a running, not cancelled job (of `keys`, when given): a pending
    one, or one whose claimant stopped heartbeating; None when none is left to take."""
    where = _claimable(job_id, stale_before, max_attempts)
    if keys is not None:
        where.append(JobShard.key.in_(list(keys)))
    candidates = session.execute(select(JobShard.id, JobShard.status, JobShard.attempts).where(*where)
                                 .order_by(JobShard.created_at, JobShard.key).limit(8)).all()
    for ident, status, attempts in candidates:
        token = uuid.uuid4().hex
        taken = session.execute(update(JobShard).where(  # only if nobody took it meanwhile
            JobShard.id == ident, JobShard.status == status, JobShard.attempts == attempts,
        ).values(status="running", attempts=attempts + 1, claimed_by=worker[:200], claim_token=token,
                 heartbeat_at=utcnow()))
        session.commit()
        if taken.rowcount == 1:
            row = session.get(JobShard, ident, populate_existing=True)
            return ShardClaim(ident, row.key, row.payload, token)
    return None


def peek_shard(session: Session, job_id: uuid.UUID, stale_before: datetime,
               max_attempts: int) -> dict[str, Any] | None:
    """The payload of a shard `claim_shard` would take now, without taking it (a worker
    loads the job's model before it claims), or None."""
    where = _claimable(job_id, stale_before, max_attempts)
    return session.scalar(select(JobShard.payload).where(*where)
                          .order_by(JobShard.created_at, JobShard.key).limit(1))


def shard_heartbeat(session: Session, shard_id: uuid.UUID, token: str) -> bool:
    """Keep a claim alive; False once another worker has taken the shard over."""
    result = session.execute(update(JobShard).where(
        JobShard.id == shard_id, JobShard.claim_token == token, JobShard.status == "running",
    ).values(heartbeat_at=utcnow()))
    session.commit()
    return result.rowcount == 1


def complete_shard(session: Session, shard_id: uuid.UUID, worker: str, result: dict[str, Any],
                   seconds: float) -> bool:
    """Store a shard's result; the first to finish it wins (every claimant computes the
    same numbers), later ones change nothing."""
    done = session.execute(update(JobShard).where(JobShard.id == shard_id, JobShard.status != "done").values(
        status="done", result=result, claimed_by=worker[:200], seconds=seconds, error=None,
        finished_at=utcnow()))
    session.commit()
    return done.rowcount == 1


def fail_shard(session: Session, shard_id: uuid.UUID, token: str, error: str) -> None:
    """Give the shard back with the error; it is tried again until its attempts run out."""
    session.execute(update(JobShard).where(
        JobShard.id == shard_id, JobShard.claim_token == token, JobShard.status == "running",
    ).values(status="pending", error=error[:2000], heartbeat_at=None))
    session.commit()


@dataclass(frozen=True)
class ShardState:
    status: str
    attempts: int
    error: str | None
    claimed_by: str | None
    heartbeat_at: datetime | None
    result: dict[str, Any] | None


def shard_states(session: Session, job_id: uuid.UUID, keys: Sequence[str], *,
                 with_results: bool = False) -> dict[str, ShardState]:
    """The named shards' states (and results, when asked: they can be large)."""
    columns = [JobShard.key, JobShard.status, JobShard.attempts, JobShard.error, JobShard.claimed_by,
               JobShard.heartbeat_at]
    if with_results:
        columns.append(JobShard.result)
    rows = session.execute(select(*columns).where(JobShard.job_id == job_id, JobShard.key.in_(list(keys))))
    return {r[0]: ShardState(*r[1:6], r[6] if with_results else None) for r in rows}


def record_sensitivity(session: Session, *, key: str, model: str, method: str,
                       params: dict[str, Any], seconds: float, hit: bool,
                       job_id: uuid.UUID) -> None:
    """Count one use of a sensitivity table in the shared cache."""
    entry = session.get(SensitivityCacheEntry, key)
    if entry is None:
        session.add(SensitivityCacheEntry(key=key, model=model, method=method, params=params,
                                          compute_seconds=seconds, hits=int(hit),
                                          first_job_id=job_id))
    else:
        entry.hits += 1
        entry.last_used_at = utcnow()
    try:
        session.commit()
    except IntegrityError:  # two jobs recorded the same new table at once
        session.rollback()

