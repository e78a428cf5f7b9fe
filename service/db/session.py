"""Engines and sessions. SQLite runs in WAL mode with a busy timeout, so the API
and a worker process can write the same file; an engine is made per process
(a forked worker must not reuse its parent's connections)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

_engines: dict[tuple[str, int], Engine] = {}
# connections kept per engine (one opened beyond them is closed again after use);
# the API's status reads on PostgreSQL use up to READ_THREADS of their own at once
POOL_SIZE = 10
READ_THREADS = 4


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = make_url(url).database
        pool = {}
        if path and path != ":memory:" and "mode=memory" not in url:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            pool = {"pool_size": POOL_SIZE, "max_overflow": 30}
        engine = create_engine(url, **pool,
                               connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=10,
                         connect_args={"connect_timeout": 5})


def get_engine(url: str) -> Engine:
    key = (url, os.getpid())
    if key not in _engines:
        _engines[key] = make_engine(url)
    return _engines[key]


def get_read_engine(url: str) -> Engine:
    """For the API's status reads. On SQLite the engine itself. On PostgreSQL its own
    small pool in autocommit (a lone SELECT needs no BEGIN and ROLLBACK round trips)
    without a liveness ping per checkout: after a database restart one read fails
    (503, try again), SQLAlchemy drops the stale pool, and the next one reconnects.
    That halves the database time of a poll."""
    if url.startswith("sqlite"):
        return get_engine(url)
    key = (f"read:{url}", os.getpid())
    if key not in _engines:
        _engines[key] = create_engine(url, isolation_level="AUTOCOMMIT", pool_size=READ_THREADS,
                                      max_overflow=0, connect_args={"connect_timeout": 5})
    return _engines[key]


def dispose_engines() -> None:
    for key in [k for k in _engines if k[1] == os.getpid()]:
        _engines.pop(key).dispose()


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session for workers and the CLI; the caller commits through `service.crud`."""
    session = session_factory(url)()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
