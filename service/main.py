"""Builds the FastAPI app: `uvicorn --factory service.main:create_app`."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service import crud, dashboard
from service.api.main import api_router
from service.api.routes import health
from service.broker import make_celery
from service.config import Settings, get_settings
from service.db.migrate import upgrade
from service.db.session import session_factory
from service.jobs import SubmitError
from service.metrics import Metrics
from service.uploads import UploadError

DESCRIPTION = """Mixed-precision bit allocation as a service: submit a model and a budget,
get the bit width of every layer. Every route but health needs `Authorization: Bearer <key>`."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(upgrade, settings.db_url)
        yield

    app = FastAPI(title="bitalloc", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.sessions = session_factory(settings.db_url)
    app.state.celery = make_celery(settings)
    app.state.metrics = Metrics(app.state.sessions)
    app.add_middleware(_Wrap, wrap=app.state.metrics.middleware)
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

    return app


class _Wrap:
    """Adapts a plain ASGI wrapper function to `add_middleware`."""

    def __init__(self, app, wrap):
        self.app = wrap(app)

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)
