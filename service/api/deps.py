"""Request dependencies: settings, a database session, the caller's tenant
(from `Authorization: Bearer <key>`), and the tenant-scoped lookups that answer
404 for anything the tenant does not own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPBearer
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service import crud
from service.auth import MAX_KEY_LENGTH, hash_key
from service.config import Settings
from service.db.models import Dataset, Job, StoredModel, Tenant

# dependencies that do no I/O are `async def`: FastAPI runs a plain `def` one in a
# worker thread, a round trip that costs more than they do


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    session = request.app.state.sessions()
    try:
        yield session
    finally:
        session.close()


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_db)]
CeleryDep = Annotated[Celery, Depends(get_celery)]



class TenantAuth(HTTPBearer):
    """The caller's tenant, from `Authorization: Bearer <key>`: the key's tenant from
    the app's key cache, else from the database (in a thread), then the key's rate
    limit; 401 without a working key. One dependency that is also the OpenAPI
    security scheme (HTTPBearer), as it runs on every status poll. The tenant is
    detached from any session: use its id."""

    async def __call__(self, request: Request) -> Tenant:  # type: ignore[override]
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if not key or scheme.lower() != "bearer":
            raise _refuse("missing API key: send `Authorization: Bearer <key>`")
        if len(key) > MAX_KEY_LENGTH:
            raise _refuse("invalid or revoked API key")
        key_hash = hash_key(key)
        state = request.app.state
        tenant = state.key_cache.get(key_hash)
        if tenant is None:
            tenant = await run_in_threadpool(_lookup_key, state.sessions, key_hash)
            if tenant is None:
                raise _refuse("invalid or revoked API key")
            state.key_cache.put(key_hash, tenant)
        state.rate_limiter.check(key_hash)
        return tenant


def _refuse(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, reason,
                         headers={"WWW-Authenticate": "Bearer"})


def _lookup_key(sessions: sessionmaker[Session], key_hash: str) -> Tenant | None:
    with sessions() as session:
        return crud.tenant_for_key_hash(session, key_hash)


get_tenant = TenantAuth(auto_error=False, scheme_name="HTTPBearer",
                        description="an API key: `bitalloc keys create --tenant NAME` makes "
                                    "one; `bitalloc serve` prints one")
TenantDep = Annotated[Tenant, Depends(get_tenant)]


def _owned(session: Session, tenant: Tenant, cls, ident: uuid.UUID, what: str):
    """The tenant's row, or 404 (also for other tenants' ids: no hint they exist)."""
    row = crud.get_owned(session, cls, tenant.id, ident)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {ident} not found")
    return row


def _owned_job(session: SessionDep, tenant: TenantDep, job_id: uuid.UUID) -> Job:
    return _owned(session, tenant, Job, job_id, "job")


def _owned_model(session: SessionDep, tenant: TenantDep, model_id: uuid.UUID) -> StoredModel:
    return _owned(session, tenant, StoredModel, model_id, "model")


def _owned_dataset(session: SessionDep, tenant: TenantDep, dataset_id: uuid.UUID) -> Dataset:
    return _owned(session, tenant, Dataset, dataset_id, "dataset")


JobDep = Annotated[Job, Depends(_owned_job)]
ModelDep = Annotated[StoredModel, Depends(_owned_model)]
DatasetDep = Annotated[Dataset, Depends(_owned_dataset)]
