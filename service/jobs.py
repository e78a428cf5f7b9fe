"""Submitting and cancelling jobs: the row is committed first, then the task is
sent by name (a worker that sees the message always finds the row)."""

from __future__ import annotations

import hashlib
import json
import logging

from celery import Celery
from sqlalchemy.orm import Session

from service import broker, crud
from service.config import Settings
from service.db.models import Dataset, Job, StoredModel, Tenant
from service.job_status import FINISHED
from service.limits import too_many
from service.schemas import JobCreate
from workers.manifest import builtin_model_names

log = logging.getLogger(__name__)


class SubmitError(Exception):
    """A job that cannot be submitted: HTTP status and reason."""

    def __init__(self, status_code: int, reason: str):
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


def submit(session: Session, settings: Settings, celery: Celery, tenant: Tenant,
           body: JobCreate, idempotency_key: str | None) -> tuple[Job, bool]:
    """(job, created): with a known idempotency key, the job made the first time."""
    spec = body.job_spec()
    cap = settings.max_active_jobs_per_tenant
    if cap and (idempotency_key is None or crud.find_by_idempotency_key(
            session, tenant.id, idempotency_key) is None):
        active = crud.count_active_jobs(session, tenant.id)
        if active >= cap:
            raise too_many(f"{active} of your jobs are queued or running, the cap is {cap}; "
                           "submit again when one finishes", settings.heartbeat_interval_s)
    model_id = None
    builtins = builtin_model_names()
    if spec.model not in builtins:
        model = crud.find_upload(session, StoredModel, tenant.id, spec.model)
        if model is None:
            raise SubmitError(422, f"unknown model {spec.model!r}: give a built-in model "
                                   f"({', '.join(builtins)}) or the name or id of a "
                                   "model you uploaded (GET /v1/models)")
        model_id = model.id
    dataset_id = None
    if body.dataset is not None:
        dataset = crud.find_upload(session, Dataset, tenant.id, body.dataset)
        if dataset is None:
            raise SubmitError(422, f"unknown dataset {body.dataset!r}: give the name or id of "
                                   "a dataset you uploaded (GET /v1/datasets)")
        dataset_id = dataset.id
    request = body.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    try:
        job, created = crud.create_job(
            session, tenant.id, spec.model_dump(mode="json"), model_id=model_id,
            dataset_id=dataset_id, idempotency_key=idempotency_key, request_hash=digest)
    except crud.Conflict as exc:
        raise SubmitError(409, str(exc)) from None
    if created:
        try:
            broker.send_job(celery, settings, str(job.id), job.task_id)
        except Exception as exc:
            log.exception("could not send job %s to the broker", job.id)
            crud.delete_job(session, job)
            raise SubmitError(503, f"the task broker is unreachable ({type(exc).__name__}); "
                                   "nothing was submitted, try again") from None
        crud.mark_enqueued(session, job)
    return job, created


def cancel(session: Session, celery: Celery, job: Job) -> Job:
    if job.status in FINISHED and job.status != "cancelled":
        raise SubmitError(409, f"job already {job.status}; only queued or running jobs "
                               "can be cancelled")
    task_id = job.task_id
    job = crud.request_cancel(session, job)
    try:
        broker.revoke(celery, task_id)
    except Exception:  # the worker also checks the database between stages
        log.warning("could not broadcast revoke for job %s", job.id, exc_info=True)
    return job
