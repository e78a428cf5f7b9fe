"""The dashboard: static HTML, JS, CSS and hand-written SVG charts served at `/`.
Nothing is loaded from the internet; the page talks to /v1 with the API key the
person signs in with (kept in sessionStorage, so it leaves with the tab)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from workers.manifest import manifest

ROOT = Path(__file__).parent


def mount(app: FastAPI) -> None:
    """`/` is the single page; `/dashboard/...` its scripts and styles, and
    `/dashboard/builtins.json` the built-in models the submit form offers and
    `/dashboard/manifest.json` the whole manifest (as /v1/manifest gives them; these
    need no key: they hold nothing of a tenant's)."""

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(ROOT / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/dashboard/builtins.json", include_in_schema=False)
    def builtins() -> dict[str, list[str]]:
        return {"models": [m["name"] for m in manifest()["models"]]}

    @app.get("/dashboard/manifest.json", include_in_schema=False)
    def manifest_json() -> dict:
        return manifest()

    app.mount("/dashboard", StaticFiles(directory=ROOT), name="dashboard")
