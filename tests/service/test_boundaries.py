"""The service never imports torch (the API sends tasks by name), and the
migrations build exactly the tables the models describe, on SQLite and
PostgreSQL."""

from __future__ import annotations

import subprocess
import sys

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service.db.migrate import alembic_config, upgrade
from service.db.models import Base
from service.db.session import get_engine

SERVICE_MODULES = ["service.main", "service.cli", "service.serve", "service.client",
                   "service.uploads.store", "service.crud"]


def test_service_imports_no_torch(tmp_path):
    code = (f"import sys\nfor m in {SERVICE_MODULES!r}: __import__(m)\n"
            "from service.config import Settings\nfrom service.main import create_app\n"
            f"create_app(Settings(data_dir={str(tmp_path)!r}))\n"
            "from service.cli import make_parser\nmake_parser()\n"
            "heavy = [m for m in ('torch', 'triton', 'pulp', 'workers.pipeline') "
            "if m in sys.modules]\nassert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def _check_schema(url: str) -> None:
    upgrade(url)
    upgrade(url)  # a second start finds nothing to do
    with get_engine(url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)
    assert diff == []


def test_migrations_match_models_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    _check_schema(url)
    config = alembic_config()
    with get_engine(url).connect() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
        conn.commit()
        assert inspect(conn).get_table_names() == ["alembic_version"]


def test_migrations_match_models_on_postgres(pg_url):
    from service.config import Settings

    _check_schema(Settings(database_url=pg_url).db_url)


@pytest.mark.parametrize("url, message", [
    ("mysql://x", "DATABASE_URL must be sqlite:/// or postgresql://"),
])
def test_settings_refuse_unsupported_databases(url, message):
    from pydantic import ValidationError

    from service.config import Settings

    with pytest.raises(ValidationError, match=message):
        Settings(database_url=url)


def test_production_needs_postgres():
    from pydantic import ValidationError

    from service.config import Settings

    with pytest.raises(ValidationError, match="production needs DATABASE_URL"):
        Settings(environment="production", database_url=None)
    with pytest.raises(ValidationError, match="at least 3 heartbeat intervals"):
        Settings(heartbeat_interval_s=10, heartbeat_timeout_s=20)
