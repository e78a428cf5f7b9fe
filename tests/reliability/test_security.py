"""Security of the API in one process (SQLite, filesystem broker): every route is
tenant-scoped (found by walking the app's routes, so a new route cannot be
missed), keys are stored only hashed and never logged, a per-key rate limit and
a per-tenant cap on jobs in flight answer 429 with Retry-After, uploads stay in
the data folder, and CORS is off unless configured."""

from __future__ import annotations

import logging
import re
import sqlite3
import time
import uuid

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from svc_files import safetensors_bytes
from svc_helpers import make_settings, new_key

from service import storage
from service.db.session import dispose_engines
from service.main import create_app

JOB = {"model": "digits-cnn", "method": "hawq_v2",
       "method_params": {"max_probes": 10, "min_probes": 4, "tol": 0.2},
       "budgets": {"avg_bits": 4}, "pareto_points": 0}
DIGITS_WEIGHTS = safetensors_bytes({"fc.weight": ("F32", (4, 4))})
CALIBRATION = safetensors_bytes({"inputs": ("F32", (4, 1, 8, 8))})
PUBLIC = {"/healthz", "/readyz", "/metrics", "/", "/openapi.json", "/docs", "/redoc",
          "/docs/oauth2-redirect"}
SHARED = {"/v1/manifest"}  # needs a key, but is the same for every tenant


def app_client(tmp_path, **overrides) -> TestClient:
    return TestClient(create_app(make_settings(tmp_path, **overrides)))


@pytest.fixture
def owned(client, auth) -> dict[str, str]:
    """One job, model and dataset of tenant acme: path parameter name -> id."""
    job = client.post("/v1/jobs", json=JOB, headers=auth).json()
    model = client.post("/v1/models", headers=auth, data={"name": "w", "architecture": "digits-cnn"},
                        files={"file": ("w.safetensors", DIGITS_WEIGHTS)}).json()
    dataset = client.post("/v1/datasets", headers=auth, data={"name": "c"},
                          files={"file": ("c.safetensors", CALIBRATION)}).json()
    return {"job_id": job["id"], "model_id": model["id"], "dataset_id": dataset["id"]}


def api_routes(app) -> list[tuple[str, str]]:
    """(method, full path) of every API route, through included routers (FastAPI keeps
    those lazily as wrappers around the original router)."""
    def walk(routes, prefix: str):
        for route in routes:
            if isinstance(route, APIRoute):
                yield from ((m, prefix + route.path) for m in route.methods if m != "HEAD")
            elif hasattr(route, "original_router"):
                yield from walk(route.original_router.routes, prefix + route.include_context.prefix)
            else:
                assert not hasattr(route, "routes") or getattr(route, "path", "").startswith(
                    "/dashboard"), f"routes under {route!r} would be missed"
    return sorted(set(walk(app.routes, "")))


def test_every_route_needs_a_key_and_hides_other_tenants_rows(client, auth, settings, owned):
    other = new_key(settings, "globex")
    checked = 0
    for method, path in api_routes(client.app):
        if path in PUBLIC or not path.startswith("/v1"):
            continue
        params = set(re.findall(r"{(\w+)}", path))
        assert params <= set(owned), f"{method} {path}: add its parameters to this test"
        url = path.format(**owned)
        assert client.request(method, url).status_code == 401, f"{method} {path} without a key"
        r = client.request(method, url, headers=other)
        if params:  # acme's row seen by globex: as if it did not exist
            assert r.status_code == 404, f"{method} {path}: {r.status_code} {r.text}"
        elif method == "GET" and path in SHARED:
            assert r.status_code == 200 and r.json() == client.get(url, headers=auth).json()
        elif method == "GET":  # a listing: none of acme's rows
            assert r.status_code == 200 and r.json()["count"] == 0, f"GET {path}: {r.text}"
        r = client.request(method, url, headers=auth)
        assert r.status_code < 500 and r.status_code not in (401, 404) or (
            path.endswith("/artifact")), f"{method} {path} for its owner: {r.text}"
        checked += 1
    assert checked >= 11  # jobs x7, models x3, datasets x3 (the POSTs without ids included)


def test_keys_are_stored_only_hashed(client, auth, settings):
    key = auth["Authorization"].removeprefix("Bearer ")
    assert client.get("/v1/jobs", headers=auth).status_code == 200
    db = settings.data_path / "bitalloc.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT * FROM api_keys").fetchall()
    assert rows and not any(key in str(value) for row in rows for value in row)
    for path in settings.data_path.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), f"the key is in {path}"


def test_keys_never_appear_in_logs(client, auth, settings, caplog):
    key = auth["Authorization"].removeprefix("Bearer ")
    caplog.set_level(logging.DEBUG)
    client.post("/v1/jobs", json=JOB, headers=auth)
    client.get("/v1/jobs", headers=auth)
    client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}x"})  # refused
    client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth)
    client.get("/metrics")
    assert caplog.records, "nothing was logged: the check would prove nothing"
    assert key not in caplog.text
    assert key not in client.get("/metrics").text


def test_rate_limit_per_key_answers_429_with_retry_after(tmp_path):
    with app_client(tmp_path, rate_limit_per_s=0.5, rate_limit_burst=3) as c:
        settings = c.app.state.settings
        a, b = new_key(settings, "acme"), new_key(settings, "acme")
        assert [c.get("/v1/jobs", headers=a).status_code for _ in range(3)] == [200] * 3
        r = c.get("/v1/jobs", headers=a)
        assert r.status_code == 429 and "rate limit" in r.json()["detail"]
        assert 1 <= int(r.headers["retry-after"]) <= 2
        assert c.get("/v1/jobs", headers=b).status_code == 200  # per key, not per tenant
        assert c.get("/healthz").status_code == 200
    dispose_engines()


def test_rate_limit_is_split_between_api_processes(tmp_path):
    """With N API processes each holds 1/N of a key's limit: never more in all."""
    with app_client(tmp_path, rate_limit_per_s=0.5, rate_limit_burst=4, api_workers=2) as c:
        a = new_key(c.app.state.settings, "acme")
        assert [c.get("/v1/jobs", headers=a).status_code for _ in range(3)] == [200, 200, 429]
    dispose_engines()


def test_a_revoked_key_stops_working_despite_the_key_cache(tmp_path):
    from service import crud
    from service.db.session import session_scope

    with app_client(tmp_path, auth_cache_ttl_s=0.5) as c:
        settings = c.app.state.settings
        with session_scope(settings.db_url) as session:
            here, key_here = crud.create_api_key(session, "acme")
            there, key_there = crud.create_api_key(session, "acme")
        for key in (key_here, key_there):  # both now cached
            assert c.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        # revoked in this process: refused at once
        with session_scope(settings.db_url) as session:
            assert crud.revoke_api_key(session, here.prefix) == 1
        r = c.get("/v1/jobs", headers={"Authorization": f"Bearer {key_here}"})
        assert r.status_code == 401
        # revoked by another process (`bitalloc keys revoke`; here straight in the
        # database): refused once the cache entry expires
        db = sqlite3.connect(settings.db_url.split("///", 1)[1])
        db.execute("UPDATE api_keys SET revoked_at = CURRENT_TIMESTAMP WHERE prefix = ?",
                   (there.prefix,))
        db.commit()
        db.close()
        time.sleep(0.6)
        r = c.get("/v1/jobs", headers={"Authorization": f"Bearer {key_there}"})
        assert r.status_code == 401 and r.json()["detail"] == "invalid or revoked API key"
    dispose_engines()


def test_cap_on_jobs_in_flight_per_tenant(tmp_path):
    with app_client(tmp_path, max_active_jobs_per_tenant=2) as c:
        settings = c.app.state.settings
        acme, globex = new_key(settings, "acme"), new_key(settings, "globex")
        first = c.post("/v1/jobs", json=JOB, headers={**acme, "Idempotency-Key": "one"})
        assert c.post("/v1/jobs", json={**JOB, "seed": 1}, headers=acme).status_code == 202
        r = c.post("/v1/jobs", json={**JOB, "seed": 2}, headers=acme)
        assert r.status_code == 429 and "the cap is 2" in r.json()["detail"]
        assert int(r.headers["retry-after"]) >= 1
        assert c.get("/v1/jobs", headers=acme).json()["count"] == 2  # nothing half-made
        # a retry of a job already made is not a new job; other tenants are not held back
        again = c.post("/v1/jobs", json=JOB, headers={**acme, "Idempotency-Key": "one"})
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        assert c.post("/v1/jobs", json=JOB, headers=globex).status_code == 202
        # a finished job frees its slot
        assert c.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=acme).status_code == 202
        assert c.post("/v1/jobs", json={**JOB, "seed": 3}, headers=acme).status_code == 202
    dispose_engines()


def test_cors_is_off_unless_configured(client, auth, tmp_path):
    origin = {"Origin": "https://evil.example"}
    r = client.get("/v1/jobs", headers={**auth, **origin})
    assert "access-control-allow-origin" not in r.headers
    r = client.options("/v1/jobs", headers={**origin, "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers
    with app_client(tmp_path / "cors", cors_origins=["https://app.example"]) as c:
        key = new_key(c.app.state.settings, "acme")
        ok = c.get("/v1/jobs", headers={**key, "Origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        bad = c.get("/v1/jobs", headers={**key, **origin})
        assert "access-control-allow-origin" not in bad.headers
    dispose_engines()


@pytest.mark.parametrize("filename", ["../../escape.safetensors", "/tmp/abs.safetensors",
                                      "..\\..\\win.safetensors", "a/../../b.safetensors"])
def test_uploads_stay_in_the_data_folder(client, auth, settings, tmp_path, filename):
    r = client.post("/v1/models", headers=auth, data={"name": "w", "architecture": "digits-cnn"},
                    files={"file": (filename, DIGITS_WEIGHTS)})
    assert r.status_code in (201, 422), r.text
    root = settings.data_path
    outside = [p for p in tmp_path.rglob("*.safetensors") if not p.is_relative_to(root)]
    assert outside == []
    assert not (root.parent.parent / "escape.safetensors").exists()
    for stored in (root / "tenants").rglob("*"):
        assert stored.resolve().is_relative_to(root)
    with pytest.raises(ValueError, match="leaves the data folder"):
        storage.absolute(settings, "../../etc/passwd")
