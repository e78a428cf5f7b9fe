"""/v1/jobs: submit, list, get, progress, cancel, result, artifact."""

from __future__ import annotations

import uuid
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse

from service import crud, jobs, storage
from service.api.deps import CeleryDep, JobDep, SessionDep, SettingsDep, TenantDep
from service.db.models import Tenant
from service.schemas import JobCreate, JobFilter, JobProgress, JobPublic, JobResult, JobsPublic

router = APIRouter(prefix="/jobs", tags=["jobs"])

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=200,
    description="a retry with the same key returns the job made the first time")]


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
             responses={200: {"description": "the job made earlier with this Idempotency-Key"},
                        409: {"description": "Idempotency-Key reused for another request"},
                        422: {"description": "invalid request, unknown model or dataset"},
                        503: {"description": "task broker unreachable; nothing submitted"}})
def submit_job(body: JobCreate, session: SessionDep, settings: SettingsDep, celery: CeleryDep,
               tenant: TenantDep, response: Response,
               idempotency_key: IdempotencyKey = None) -> JobPublic:
    job, created = jobs.submit(session, settings, celery, tenant, body, idempotency_key)
    if not created:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobPublic.of(job)


@router.get("", response_model=JobsPublic)
def list_jobs(session: SessionDep, tenant: TenantDep,
              query: Annotated[JobFilter, Query()]) -> JobsPublic:
    found, count, cursor = crud.list_jobs(
        session, tenant.id, statuses=query.status, created_after=query.created_after,
        created_before=query.created_before, limit=query.limit, cursor=query.cursor)
    return JobsPublic(data=[JobPublic.of(j) for j in found], count=count, next_cursor=cursor)


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(job_id: uuid.UUID, tenant: TenantDep, request: Request) -> Response:
    return await _status_read(request, tenant, job_id, JobPublic)


@router.get("/{job_id}/progress", response_model=JobProgress)
async def get_progress(job_id: uuid.UUID, tenant: TenantDep, request: Request) -> Response:
    return await _status_read(request, tenant, job_id, JobProgress)


async def _status_read(request: Request, tenant: Tenant, job_id: uuid.UUID, schema) -> Response:
    """What clients poll, so kept lean: no session, one query on a pooled connection
    for the schema's columns (never the result itself), serialised straight to JSON.
    On SQLite the read runs on the event loop: it is local and in WAL mode never waits
    for a writer, and a trip to a thread would cost more than the query. A database
    server is waited for in a thread."""
    state, fields = request.app.state, tuple(schema.model_fields)

    def read():
        with state.read_engine.connect() as conn:
            return crud.job_fields(conn, tenant.id, job_id, fields)

    if state.read_engine.dialect.name == "sqlite":
        row = read()
    else:
        row = await anyio.to_thread.run_sync(read, limiter=state.read_limiter)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return Response(schema.model_validate(row).model_dump_json(),
                    media_type="application/json")


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
             responses={409: {"description": "the job already finished"}})
def cancel_job(job: JobDep, session: SessionDep, celery: CeleryDep) -> JobPublic:
    return JobPublic.of(jobs.cancel(session, celery, job))


@router.get("/{job_id}/result", response_model=JobResult,
            responses={409: {"description": "the job has not succeeded (yet)"}})
def get_result(job: JobDep):
    if job.status != "succeeded" or job.result is None:
        if job.status == "failed":
            reason = f"job failed: {job.error}"
        elif job.status == "cancelled":
            reason = "job was cancelled"
        else:
            reason = (f"job is {job.status} ({job.stage or 'waiting'}, {job.progress:.0%}); "
                      "the result is ready when it succeeds")
        raise HTTPException(status.HTTP_409_CONFLICT, reason)
    return job.result


@router.get("/{job_id}/artifact", response_class=FileResponse,
            responses={404: {"description": "no artifact for this job"}})
def get_artifact(job: JobDep, settings: SettingsDep):
    path = storage.absolute(settings, job.artifact_path) if job.artifact_path else None
    if path is None or not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no artifact for this job")
    return FileResponse(path, filename=f"bitalloc-{job.id}{''.join(path.suffixes)}")
