"""The service tests' fixtures (settings, app client, API keys, PostgreSQL, Redis,
real `bitalloc serve` processes), reused here; with CI set nothing is skipped."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SERVICE_TESTS = Path(__file__).resolve().parent.parent / "service"
sys.path.insert(0, str(SERVICE_TESTS))

_spec = importlib.util.spec_from_file_location("service_test_fixtures", SERVICE_TESTS / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

settings = _fixtures.settings
client = _fixtures.client
auth = _fixtures.auth
pg_url = _fixtures.pg_url
redis_url = _fixtures.redis_url
