"""Helpers for the service tests: settings in a tmp folder, API keys."""

from __future__ import annotations

import uuid

from service import crud
from service.config import Settings
from service.db.session import session_scope


def make_settings(tmp_path, **overrides) -> Settings:
    values = {"data_dir": tmp_path / "data", "database_url": None, "redis_url": None,
              "queue": f"bitalloc-test-{uuid.uuid4().hex[:8]}"}
    values.update(overrides)
    return Settings(**values)


def new_key(settings: Settings, tenant: str) -> dict[str, str]:
    """Authorization headers with a fresh key for `tenant`."""
    with session_scope(settings.db_url) as session:
        _, key = crud.create_api_key(session, tenant)
    return {"Authorization": f"Bearer {key}"}
