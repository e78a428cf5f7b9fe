"""Bad input the service tests do not already try (tests/service/test_uploads.py
covers zip traversal, zip symlinks, zip bombs, corrupt archives, pickles in
archives): each is answered with a 4xx naming the reason, or a failed job with
a reason, and leaves no row and no file behind."""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np
import pytest
from svc_files import hf_files, safetensors_bytes, tar_bytes, zip_bytes

from service.worker.runner import JobRunner

JOB = {"model": "digits-cnn", "method": "hawq_v2",
       "method_params": {"max_probes": 10, "min_probes": 4, "tol": 0.2},
       "budgets": {"avg_bits": 4}, "pareto_points": 0}


def tensors_file(tensors: dict[str, np.ndarray], dtypes: dict[str, str] | None = None) -> bytes:
    """A safetensors file with real tensor bytes (BF16 given as raw uint16)."""
    header, blobs, offset = {}, [], 0
    names = {np.dtype("float32"): "F32", np.dtype("float16"): "F16",
             np.dtype("float64"): "F64", np.dtype("int64"): "I64", np.dtype("bool"): "BOOL"}
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        dtype = (dtypes or {}).get(name) or names[array.dtype]
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def weights(value: float = 0.5, dtype=np.float32) -> dict[str, np.ndarray]:
    w = np.full((8, 8), 0.5, dtype=dtype)
    w[3, 4] = value
    return {"conv1.weight": w, "conv1.bias": np.zeros(8, dtype=dtype)}


def bf16(value: float) -> np.ndarray:
    w = np.full((4, 4), 0.5, dtype=np.float32)
    w[1, 1] = value
    return (w.view(np.uint32) >> 16).astype(np.uint16)


def uploaded_files(settings) -> list[str]:
    root = settings.data_path
    return sorted(str(p.relative_to(root)) for sub in ("tenants", "staging")
                  if (root / sub).exists() for p in (root / sub).rglob("*") if p.is_file())


def assert_nothing_left(client, auth, settings) -> None:
    for what in ("models", "datasets"):
        assert client.get(f"/v1/{what}", headers=auth).json()["count"] == 0
    assert uploaded_files(settings) == []


TRUNCATED = safetensors_bytes({"w": ("F32", (8, 8))})
BAD_WEIGHTS = [
    ("truncated", TRUNCATED[:-100], "not a valid safetensors file"),
    ("header claims more than the file holds",
     struct.pack("<Q", 10_000) + b'{"w": {}}', "does not fit a file of"),
    ("tensor bytes beyond the end", TRUNCATED[:-4], "tensors cover 256 bytes but the file holds 252"),
    ("header not JSON", struct.pack("<Q", 16) + b"\x00\x01garbage\xff\xfe      ",
     "header is not JSON"),
    ("empty file", b"", "too short"),
    ("pickle offered as .safetensors", b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.",
     "header length"),
    ("random bytes", os.urandom(4096), "not a valid safetensors file"),
    ("integer weights", tensors_file({"conv1.weight": np.ones((4, 4), dtype=np.int64)}),
     "must be floating point"),
    ("bool weights", tensors_file({"mask": np.ones(8, dtype=bool)}), "must be floating point"),
    ("NaN in F32", tensors_file(weights(math.nan)), "holds NaN or infinite values"),
    ("+Inf in F32", tensors_file(weights(math.inf)), "holds NaN or infinite values"),
    ("-Inf in F64", tensors_file(weights(-math.inf, np.float64)), "holds NaN or infinite values"),
    ("NaN in F16", tensors_file(weights(math.nan, np.float16)), "holds NaN or infinite values"),
    ("Inf in BF16", tensors_file({"w": bf16(math.inf)}, {"w": "BF16"}),
     "holds NaN or infinite values"),
    ("no tensors", tensors_file({}), "holds no tensors"),
]


@pytest.mark.parametrize("case, content, reason", BAD_WEIGHTS, ids=[c[0] for c in BAD_WEIGHTS])
def test_bad_state_dict_is_refused_with_reason(client, auth, settings, case, content, reason):
    r = client.post("/v1/models", headers=auth, data={"name": "w", "architecture": "digits-cnn"},
                    files={"file": ("w.safetensors", content)})
    assert r.status_code == 422, r.text
    assert reason in r.json()["detail"]
    assert_nothing_left(client, auth, settings)


def test_finite_weights_of_every_float_dtype_are_accepted(client, auth):
    for i, content in enumerate([tensors_file(weights()), tensors_file(weights(dtype=np.float16)),
                                 tensors_file({"w": bf16(1.0)}, {"w": "BF16"})]):
        r = client.post("/v1/models", headers=auth,
                        data={"name": f"w{i}", "architecture": "digits-cnn"},
                        files={"file": ("w.safetensors", content)})
        assert r.status_code == 201, r.text


def test_nan_weights_inside_an_archive_are_refused(client, auth, settings):
    files = hf_files(**{"model.safetensors": tensors_file({"w": np.array([1.0, np.nan],
                                                                         dtype=np.float32)})})
    r = client.post("/v1/models", headers=auth, data={"name": "m"},
                    files={"file": ("m.zip", zip_bytes(files))})
    assert r.status_code == 422 and "holds NaN or infinite values" in r.json()["detail"]
    assert_nothing_left(client, auth, settings)


BAD_ARCHIVES = [
    ("tar with ..", tar_bytes({**hf_files(), "../evil.txt": b"x"}), "points outside the archive"),
    ("tar with absolute path", tar_bytes({**hf_files(), "/etc/evil": b"x"}), "absolute path"),
    ("tar symlink escaping", tar_bytes(hf_files(), symlink=("config2.json", "../../../etc/passwd")),
     "is a link"),
    ("plain tar bomb", tar_bytes({**hf_files(), "zeros": bytes(600_000)}, mode="w"),
     "larger than the limit"),
]


@pytest.mark.parametrize("case, content, reason", BAD_ARCHIVES, ids=[c[0] for c in BAD_ARCHIVES])
def test_bad_archive_is_refused_with_reason(tmp_path, case, content, reason):
    from fastapi.testclient import TestClient
    from svc_helpers import make_settings, new_key

    from service.db.session import dispose_engines
    from service.main import create_app

    settings = make_settings(tmp_path, max_upload_bytes=500_000, max_extracted_bytes=300_000)
    with TestClient(create_app(settings)) as client:
        auth = new_key(settings, "acme")
        r = client.post("/v1/models", headers=auth, data={"name": "m"},
                        files={"file": ("m.tar", content)})
        assert r.status_code in (413, 422), r.text
        assert reason in r.json()["detail"]
        assert_nothing_left(client, auth, settings)
    dispose_engines()


BAD_CALIBRATION = [
    ("empty .txt", "c.txt", b"", "holds no text"),
    ("empty .jsonl", "c.jsonl", b"", "holds no text"),
    ("empty .safetensors", "c.safetensors", b"", "too short"),
    ("binary as .txt", "c.txt", bytes(range(256)) * 4, "is not UTF-8"),
    ("binary as .jsonl", "c.jsonl", b"\x00\x01\x02\xff\n", "is not UTF-8"),
    ("binary as .safetensors", "c.safetensors", os.urandom(2048), "not a valid safetensors file"),
    ("zero samples", "c.safetensors", tensors_file({"inputs": np.zeros((0, 4), np.float32)}),
     "leading sample dimension > 0"),
    ("pickle as calibration", "c.pkl", b"\x80\x04K\x01.", "unsupported calibration file"),
]


@pytest.mark.parametrize("case, filename, content, reason", BAD_CALIBRATION,
                         ids=[c[0] for c in BAD_CALIBRATION])
def test_bad_calibration_data_is_refused(client, auth, settings, case, filename, content, reason):
    r = client.post("/v1/datasets", headers=auth, data={"name": "c"},
                    files={"file": (filename, content)})
    assert 400 <= r.status_code < 500, r.text
    assert reason in r.json()["detail"]
    assert_nothing_left(client, auth, settings)


BAD_JOBS = [
    ("avg_bits zero", {"budgets": {"avg_bits": 0}}, "must be positive"),
    ("avg_bits above 32", {"budgets": {"avg_bits": 64}}, "avg_bits must be between 1 and 32"),
    ("avg_bits below 1", {"budgets": {"avg_bits": 0.5}}, "avg_bits must be between 1 and 32"),
    ("avg_bits not a number", {"budgets": {"avg_bits": "four"}}, "valid number"),
    ("avg_bits NaN", {"budgets": {"avg_bits": "NaN"}}, "budget"),
    ("size twice", {"budgets": {"size_mb": 1, "size_bytes": 1000}}, "give the size budget once"),
    ("latency without table", {"budgets": {"latency_ms": 3}}, "needs latency_table"),
    ("min above max quality drop", {"budgets": {"max_quality_drop": 1}, "min_quality_drop": 2},
     "min_quality_drop needs a max_quality_drop budget at least as large"),
    ("no budget", {"budgets": {}}, "at least 1 item"),
    ("unknown top-level field", {"colour": "red"}, "Extra inputs are not permitted"),
    ("unknown nested field", {"quant": {"group_size": 64, "colour": "red"}},
     "Extra inputs are not permitted"),
    ("negative seed", {"seed": -1}, "greater than or equal to 0"),
    ("too many pareto points", {"pareto_points": 10_000}, "less than or equal to 128"),
    ("weight bits empty", {"weight_bits": []}, "at least 1 item"),
]


@pytest.mark.parametrize("case, change, reason", BAD_JOBS, ids=[c[0] for c in BAD_JOBS])
def test_bad_job_request_is_refused(client, auth, case, change, reason):
    r = client.post("/v1/jobs", json={**JOB, **change}, headers=auth)
    assert r.status_code == 422, r.text
    assert reason in r.text
    assert client.get("/v1/jobs", headers=auth).json()["count"] == 0


@pytest.mark.parametrize("body, headers", [
    (b"{not json", {"Content-Type": "application/json"}),
    (b"[1, 2, 3]", {"Content-Type": "application/json"}),
    (b"\xff\xfe\x00binary", {"Content-Type": "application/octet-stream"}),
    (b"", {"Content-Type": "application/json"}),
])
def test_malformed_job_bodies_are_4xx(client, auth, body, headers):
    r = client.post("/v1/jobs", content=body, headers={**auth, **headers})
    assert 400 <= r.status_code < 500, r.text
    assert client.get("/v1/jobs", headers=auth).json()["count"] == 0


def test_oversized_bodies_are_refused(client, auth, settings):
    limit = settings.max_json_body_bytes
    big = {**JOB, "method_params": {"pad": "x" * (limit + 10)}}
    r = client.post("/v1/jobs", json=big, headers=auth)
    assert r.status_code == 413 and "larger than the limit" in r.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"model": "digits-cnn", "method_params": {"pad": "'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536
        yield b'"}}'

    r = client.post("/v1/jobs", content=chunks(),
                    headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert client.get("/v1/jobs", headers=auth).json()["count"] == 0
    # an upload over max_upload_bytes: tests/service/test_uploads.py ("too large")


def test_state_dict_the_worker_cannot_run_fails_the_job_with_a_reason(client, auth, settings):
    """A well-formed state dict whose tensors do not fit digits-cnn is stored, and the
    job that names it fails with a reason (run here by the worker's own runner)."""
    wrong = tensors_file({"not.a.layer": np.ones((3, 5), np.float32)})
    r = client.post("/v1/models", headers=auth, data={"name": "odd", "architecture": "digits-cnn"},
                    files={"file": ("odd.safetensors", wrong)})
    assert r.status_code == 201, r.text
    job = client.post("/v1/jobs", json={**JOB, "model": "odd"}, headers=auth).json()
    outcome = JobRunner(settings, job["id"], job_task_id(settings, job["id"]), "test").run()
    assert outcome == "failed"
    done = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert done["status"] == "failed" and done["error"], done
    assert "odd" in done["error"] and not done["has_result"]
    assert client.get(f"/v1/jobs/{job['id']}/result", headers=auth).status_code == 409


def job_task_id(settings, job_id: str) -> str:
    import uuid

    from service import crud
    from service.db.session import session_scope

    with session_scope(settings.db_url) as session:
        return crud.load_job(session, uuid.UUID(job_id)).task_id
