"""Shared handling of multipart uploads for /v1/models and /v1/datasets."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from service import storage
from service.config import Settings
from service.db.models import Tenant
from service.uploads.receive import receive_form

T = TypeVar("T")


def multipart_body(fields: dict[str, str]) -> dict:
    """OpenAPI description of a form with a `file` part and text fields."""
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file", "name"],
        "properties": {"file": {"type": "string", "format": "binary"},
                       **{k: {"type": "string", "description": v} for k, v in fields.items()}},
    }}}}}


async def receive_and_store(request: Request, settings: Settings, tenant: Tenant, session,
                            allowed: set[str], store: Callable[..., T]) -> T:
    received = await receive_form(request, storage.staging(settings),
                                  max_bytes=settings.max_upload_bytes, allowed_fields=allowed)
    try:
        return await run_in_threadpool(store, session, settings, tenant, received)
    finally:
        storage.remove(received.path)
