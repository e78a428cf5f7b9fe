"""The jobs API without a worker: validation at the edge, idempotency, listing
with filters and cursors, cancel of queued jobs, auth and tenant isolation.
Messages go to the filesystem broker in the test's data folder."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from svc_helpers import make_settings, new_key

from service.main import create_app

JOB = {"model": "digits-cnn", "method": "hawq_v2",
       "method_params": {"max_probes": 10, "min_probes": 4, "tol": 0.2},
       "budgets": {"avg_bits": 4}}


def queued_messages(settings) -> int:
    return len(list((settings.data_path / "broker" / "queue").glob("*.msg")))


def test_submit_commits_then_enqueues(client, auth, settings):
    r = client.post("/v1/jobs", json=JOB, headers=auth)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["attempts"] == 0
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["spec"]["weight_bits"] == [2, 3, 4, 5, 6, 8, 16]  # JobSpec defaults filled in
    assert queued_messages(settings) == 1
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["id"] == job["id"]
    progress = client.get(f"/v1/jobs/{job['id']}/progress", headers=auth).json()
    assert progress["status"] == "queued" and progress["progress"] == 0.0


@pytest.mark.parametrize("body, reason", [
    ({**JOB, "colour": "red"}, "Extra inputs are not permitted"),
    ({**JOB, "budgets": {"colour": 4}}, "unknown budget 'colour'"),
    ({**JOB, "budgets": {"avg_bits": -1}}, "must be positive"),
    ({**JOB, "weight_bits": [7]}, "weight bits must be one of"),
    ({**JOB, "model": "x" * 201}, "at most 200 characters"),
    ({k: v for k, v in JOB.items() if k != "budgets"}, "Field required"),
])
def test_invalid_requests_are_refused_at_the_edge(client, auth, settings, body, reason):
    r = client.post("/v1/jobs", json=body, headers=auth)
    assert r.status_code == 422
    assert reason in r.text
    assert client.get("/v1/jobs", headers=auth).json()["count"] == 0
    assert queued_messages(settings) == 0


def test_unknown_model_or_dataset_names_what_exists(client, auth):
    r = client.post("/v1/jobs", json={**JOB, "model": "resnet9000"}, headers=auth)
    assert r.status_code == 422
    assert "unknown model 'resnet9000'" in r.json()["detail"]
    assert "digits-cnn, digits-vit, minilm" in r.json()["detail"]
    r = client.post("/v1/jobs", json={**JOB, "dataset": "nope"}, headers=auth)
    assert r.status_code == 422 and "unknown dataset 'nope'" in r.json()["detail"]


def test_idempotency_key_returns_the_first_job(client, auth, settings):
    headers = {**auth, "Idempotency-Key": "pipeline-run-17"}
    first = client.post("/v1/jobs", json=JOB, headers=headers)
    again = client.post("/v1/jobs", json=JOB, headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert client.get("/v1/jobs", headers=auth).json()["count"] == 1
    assert queued_messages(settings) == 1
    other = client.post("/v1/jobs", json={**JOB, "budgets": {"avg_bits": 5}}, headers=headers)
    assert other.status_code == 409 and "different request" in other.json()["detail"]
    # keys are per tenant
    elsewhere = client.post("/v1/jobs", json=JOB, headers={**new_key(settings, "globex"),
                                                          "Idempotency-Key": "pipeline-run-17"})
    assert elsewhere.status_code == 202 and elsewhere.json()["id"] != first.json()["id"]


def test_list_filters_and_cursor_pages(client, auth):
    ids = [client.post("/v1/jobs", json={**JOB, "seed": i}, headers=auth).json()["id"]
           for i in range(5)]
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=auth)
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params, headers=auth).json()
        assert page["count"] == 5
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]  # newest first, each once
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}, headers=auth).json()
    assert [j["id"] for j in cancelled["data"]] == [ids[0]]
    both = client.get("/v1/jobs", params=[("status", "cancelled"), ("status", "queued")],
                      headers=auth).json()
    assert both["count"] == 5
    created = client.get(f"/v1/jobs/{ids[2]}", headers=auth).json()["created_at"]
    newer = client.get("/v1/jobs", params={"created_after": created}, headers=auth).json()
    assert [j["id"] for j in newer["data"]] == ids[:1:-1]
    older = client.get("/v1/jobs", params={"created_before": created}, headers=auth).json()
    assert [j["id"] for j in older["data"]] == ids[1::-1]


@pytest.mark.parametrize("params, status, reason", [
    ({"limit": 0}, 422, "greater than or equal to 1"),
    ({"limit": 101}, 422, "less than or equal to 100"),
    ({"status": "exploded"}, 422, "Input should be"),
    ({"cursor": "not-a-cursor"}, 400, "invalid cursor"),
    ({"colour": "red"}, 422, "Extra inputs are not permitted"),
])
def test_bad_list_queries(client, auth, params, status, reason):
    r = client.get("/v1/jobs", params=params, headers=auth)
    assert r.status_code == status and reason in r.text


def test_cancel_queued_result_and_artifact(client, auth):
    job = client.post("/v1/jobs", json=JOB, headers=auth).json()
    r = client.get(f"/v1/jobs/{job['id']}/result", headers=auth)
    assert r.status_code == 409 and "job is queued" in r.json()["detail"]
    r = client.get(f"/v1/jobs/{job['id']}/artifact", headers=auth)
    assert r.status_code == 404 and r.json()["detail"] == "no artifact for this job"
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).json()["status"] == \
        "cancelled"
    r = client.get(f"/v1/jobs/{job['id']}/result", headers=auth)
    assert r.status_code == 409 and r.json()["detail"] == "job was cancelled"


def test_tenants_see_only_their_jobs(client, auth, settings):
    job = client.post("/v1/jobs", json=JOB, headers=auth).json()
    other = new_key(settings, "globex")
    for method, path in (("GET", ""), ("GET", "/progress"), ("GET", "/result"),
                         ("GET", "/artifact"), ("POST", "/cancel")):
        r = client.request(method, f"/v1/jobs/{job['id']}{path}", headers=other)
        assert r.status_code == 404 and r.json()["detail"] == f"job {job['id']} not found"
    assert client.get("/v1/jobs", headers=other).json()["count"] == 0
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["status"] == "queued"
    r = client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth)
    assert r.status_code == 404
    assert client.get("/v1/jobs/not-a-uuid", headers=auth).status_code == 422


def test_auth_is_required_everywhere_but_health(client, settings):
    from service import crud
    from service.db.session import session_scope

    for path in ("/v1/jobs", "/v1/models", "/v1/datasets", "/v1/manifest", f"/v1/jobs/{uuid.uuid4()}"):
        r = client.get(path)
        assert r.status_code == 401 and "missing API key" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
        r = client.get(path, headers={"Authorization": "Bearer ba_wrong"})
        assert r.status_code == 401 and r.json()["detail"] == "invalid or revoked API key"
    with session_scope(settings.db_url) as session:
        row, key = crud.create_api_key(session, "acme")
        assert crud.revoke_api_key(session, row.prefix) == 1
    r = client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 401
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready == {"status": "ready", "database": "ok", "broker": "ok"}


def test_metrics_and_docs(client, auth):
    client.post("/v1/jobs", json=JOB, headers=auth)
    text = client.get("/metrics").text
    assert 'bitalloc_jobs{status="queued"} 1.0' in text
    assert 'bitalloc_http_requests_total{method="POST",route="/v1/jobs",status="202"}' in text
    schema = client.get("/openapi.json").json()
    for path in ("/v1/jobs", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/result",
                 "/v1/jobs/{job_id}/artifact", "/v1/models", "/v1/datasets", "/v1/manifest",
                 "/readyz"):
        assert path in schema["paths"]
    assert "multipart/form-data" in schema["paths"]["/v1/models"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


def test_the_manifest_is_the_registrys(client, auth):
    from workers.manifest import manifest

    got = client.get("/v1/manifest", headers=auth).json()
    assert got == manifest()
    digits = next(f for f in got["families"] if f["name"] == "digits")
    assert [(m["name"], m["direction"]) for m in digits["metrics"]][:2] == [
        ("accuracy", "higher"), ("test_loss", "lower")]
    assert {m["name"] for m in got["models"]} >= {"digits-cnn", "minilm"}


def test_unreachable_broker_submits_nothing(tmp_path):
    settings = make_settings(tmp_path, redis_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings)) as client:
        auth = new_key(settings, "acme")
        r = client.post("/v1/jobs", json=JOB, headers={**auth, "Idempotency-Key": "k"})
        assert r.status_code == 503 and "nothing was submitted" in r.json()["detail"]
        assert client.get("/v1/jobs", headers=auth).json()["count"] == 0
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["broker"].startswith("unreachable")


def test_a_job_may_name_an_uploaded_model(client, auth):
    from svc_files import hf_files, zip_bytes

    model = client.post("/v1/models", headers=auth, data={"name": "tiny"},
                        files={"file": ("m.zip", zip_bytes(hf_files()))}).json()
    for ref in ("tiny", model["id"]):
        r = client.post("/v1/jobs", json={**JOB, "model": ref}, headers=auth)
        assert r.status_code == 202 and r.json()["model_id"] == model["id"]
