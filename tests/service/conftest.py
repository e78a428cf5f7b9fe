"""Fixtures for the service: settings in a tmp data folder, an app per test,
API keys, and the real PostgreSQL and Redis on this machine (each test session
gets its own database and Redis queue). With CI set, an unreachable server
fails the tests instead of skipping them."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from svc_helpers import make_settings, new_key
from svc_processes import FAST_REAPING, serve, worker

from service.config import Settings
from service.db.session import dispose_engines
from service.main import create_app

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379"


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable: {exc}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must run the integration tests)")
    pytest.skip(message)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c
    dispose_engines()


@pytest.fixture
def auth(client, settings) -> dict[str, str]:
    return new_key(settings, "acme")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"bitalloc_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT",
                          connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        _unavailable("PostgreSQL at 127.0.0.1:5432", exc)
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=3) as s:
            s.sendall(b"PING\r\n")
            if not s.recv(16).startswith(b"+PONG"):
                raise ConnectionError("no PONG")
    except OSError as exc:
        _unavailable("Redis at 127.0.0.1:6379", exc)
    return f"{REDIS}/0"


@pytest.fixture(scope="session")
def sqlite_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-sqlite")
    # empty DATABASE_URL / REDIS_URL: the defaults, whatever the caller's environment
    env = {"BITALLOC_DATA": str(tmp / "data"), "DATABASE_URL": "", "REDIS_URL": "",
           **FAST_REAPING}
    with serve(tmp, env) as server:
        yield server


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory, pg_url, redis_url):
    import redis

    tmp = tmp_path_factory.mktemp("serve-pg")
    queue = f"bitalloc-test-{os.getpid()}-{int(time.time())}"
    env = {"BITALLOC_DATA": str(tmp / "data"), "DATABASE_URL": pg_url, "REDIS_URL": redis_url,
           "BITALLOC_QUEUE": queue, **FAST_REAPING}
    try:
        with serve(tmp, env, "--no-worker") as server, worker(tmp, env):
            yield server
    finally:
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"*{queue}*"):
            client.delete(key)
