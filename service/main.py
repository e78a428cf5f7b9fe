"""Builds the FastAPI app: `uvicorn --factory service.main:create_app`."""

from __future__ import annotations

import gc
import os
from contextlib import asynccontextmanager

import anyio
import sqlalchemy.exc
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service import crud, dashboard
from service.api.main import api_router
from service.api.routes import health
from service.auth import KeyCache
from service.broker import make_celery
from service.config import Settings, get_settings
from service.db.migrate import upgrade
from service.db.session import READ_THREADS, get_read_engine, session_factory
from service.jobs import SubmitError
from service.limits import RateLimiter
from service.metrics import Metrics
from service.uploads import UploadError

DESCRIPTION = """Mixed-precision bit allocation as a service: submit a model and a budget,
get the bit width of every layer. Every route but health needs `Authorization: Bearer <key>`."""


# FastAPI's OpenTelemetry hooks cost every request a few checks even with nothing
# configured; they stay on when OpenTelemetry is set up through the environment
NO_TELEMETRY = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


def _otel_configured() -> bool:
    return any(k.startswith("OTEL_") or k == "FASTAPI_OTEL_AUTO_CONFIGURE" for k in os.environ)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(upgrade, settings.db_url)
        # everything loaded so far lives as long as the process: keep it out of the
        # cyclic collector's full passes, which otherwise stall busy request loops
        gc.collect()
        gc.freeze()
        yield

    app = FastAPI(title="bitalloc", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  telemetry=None if _otel_configured() else NO_TELEMETRY)
    app.state.settings = settings
    app.state.read_engine = get_read_engine(settings.db_url)
    app.state.sessions = session_factory(settings.db_url)
    # status reads waiting on a database server: no more at once than pooled connections
    app.state.read_limiter = anyio.CapacityLimiter(READ_THREADS)
    app.state.celery = make_celery(settings)
    app.state.metrics = Metrics(app.state.sessions)
    # each of `api_workers` processes holds its share of every key's rate limit
    share = settings.api_workers
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_s / share,
                                         max(1, settings.rate_limit_burst // share))
    app.state.key_cache = KeyCache(settings.auth_cache_ttl_s)
    app.add_middleware(_LimitJsonBody, max_bytes=settings.max_json_body_bytes)
    app.add_middleware(_Wrap, wrap=app.state.metrics.middleware)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key"])
    app.include_router(api_router, prefix="/v1")
    app.include_router(health.router)

    dashboard.mount(app)

    @app.exception_handler(UploadError)
    @app.exception_handler(SubmitError)
    async def _reasoned(_request: Request, exc: UploadError | SubmitError) -> JSONResponse:
        return JSONResponse({"detail": exc.reason}, status_code=exc.status_code)

    @app.exception_handler(crud.BadCursor)
    async def _cursor(_request: Request, exc: crud.BadCursor) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(crud.Conflict)
    async def _conflict(_request: Request, exc: crud.Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler fails (500) on a body that is not UTF-8: show it escaped
        errors = [{**e, "input": e["input"].decode("utf-8", "backslashreplace")}
                  if isinstance(e.get("input"), bytes) else e for e in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(sqlalchemy.exc.OperationalError)
    @app.exception_handler(sqlalchemy.exc.InterfaceError)
    @app.exception_handler(sqlalchemy.exc.TimeoutError)
    async def _database_down(_request: Request, exc: Exception) -> JSONResponse:
        # a database that is briefly unreachable is not a bug in the request or the service
        return JSONResponse({"detail": f"the database is unreachable ({type(exc).__name__}); "
                                       "try again shortly"},
                            status_code=503, headers={"Retry-After": "5"})

    return app


UPLOAD_PATHS = ("/v1/models", "/v1/datasets")


class _LimitJsonBody:
    """413 for a request body over `max_bytes`, except multipart uploads (they stream
    to disk under their own limit): by Content-Length, or counted as it arrives."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if scope["path"].rstrip("/") in UPLOAD_PATHS and headers.get(
                b"content-type", b"").startswith(b"multipart/form-data"):
            return await self.app(scope, receive, send)
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # FastAPI passes HTTPException through as it is
                raise HTTPException(413, self._reason())
            return message

        await self.app(scope, counted, send)

    def _reason(self) -> str:
        return f"request body larger than the limit of {self.max_bytes} bytes"

    async def _refuse(self, scope, receive, send) -> None:
        await JSONResponse({"detail": self._reason()}, status_code=413)(scope, receive, send)


class _Wrap:
    """Adapts a plain ASGI wrapper function to `add_middleware`."""

    def __init__(self, app, wrap):
        self.app = wrap(app)

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)
