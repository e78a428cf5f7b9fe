"""Schemathesis against the app's own OpenAPI schema, in process (SQLite, the
filesystem broker, no worker), with a valid API key: no 5xx, and every response
matches the schema (body, content type, headers). Bounded: a few examples per
operation, so it fits the CI budget."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install -e '.[dev]'")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
)
from svc_helpers import make_settings, new_key  # noqa: E402

from service.db.migrate import upgrade  # noqa: E402
from service.db.session import dispose_engines  # noqa: E402
from service.main import create_app  # noqa: E402

MAX_EXAMPLES = 6
CHECKS = (not_a_server_error, response_schema_conformance, content_type_conformance,
          response_headers_conformance)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    s = make_settings(tmp_path_factory.mktemp("fuzz"), max_upload_bytes=1 << 20)
    upgrade(s.db_url)
    app = create_app(s)
    yield app, new_key(s, "fuzz")
    dispose_engines()


def test_api_answers_every_generated_request_without_5xx(fuzzed):
    """Each operation in turn (schemathesis' pytest plugin predates pytest 9, so the
    operations are driven through hypothesis here)."""
    from hypothesis import given

    app, auth = fuzzed
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 14
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            case.headers = {**(case.headers or {}), **auth}
            response = case.call()
            case.validate_response(response, checks=CHECKS)

        run()
