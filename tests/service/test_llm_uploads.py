"""Causal language models through the service: a GGUF file is an upload of its own
(its magic bytes and header checked, its architecture read from it), and jobs on an
uploaded GGUF and on a GPT-2 archive (transformers' Conv1D, tied embeddings) run in
the worker to a result whose headline is perplexity, lower being better."""

from __future__ import annotations

import io
import sys
import uuid
import zipfile
from pathlib import Path

import pytest
from svc_processes import finished, wait_for

sys.path.insert(0, str(Path(__file__).parents[1] / "llm"))
import llm_models  # noqa: E402  (the tiny causal LMs of tests/llm)

JOB_TIMEOUT_S = 300
CHEAP = {"method": "fisher", "budgets": {"avg_bits": 4}, "pareto_points": 0,
         "method_params": {"max_probes": 16}}


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return llm_models.write_gguf(llm_models.llama(tied=True), llm_models.tokenizer(), path).read_bytes()


def _gpt2_zip(tmp: Path) -> bytes:
    folder = llm_models.save_folder(llm_models.gpt2(), tmp / "tiny-gpt2")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"tiny-gpt2/{path.name}")
    return buf.getvalue()


def _upload(client, auth, filename: str, content: bytes, **fields):
    return client.post("/v1/models", headers=auth, files={"file": (filename, content)},
                       data={"name": Path(filename).stem, **fields})


def test_a_gguf_upload_is_checked_and_stored(client, auth, settings, gguf_bytes):
    r = _upload(client, auth, "tiny.gguf", gguf_bytes)
    assert r.status_code == 201, r.text
    model = r.json()
    assert model["kind"] == "gguf" and model["architecture"] == "llama"
    assert model["manifest"]["gguf"]["tensors"] == 2 * 9 + 2
    assert model["manifest"]["gguf"]["name"] == "tiny-llama"
    assert len(list((settings.data_path / "tenants").rglob("model.gguf"))) == 1

    r = _upload(client, auth, "fake.gguf", b"GGML" + gguf_bytes[4:])
    assert r.status_code == 422 and "not a GGUF file" in r.text
    r = _upload(client, auth, "named.gguf", gguf_bytes, architecture="smollm2-135m")
    assert r.status_code == 422 and "names its architecture itself" in r.text
    r = _upload(client, auth, "cut.gguf", gguf_bytes[:40])
    assert r.status_code == 422 and "truncated" in r.text
    assert client.get("/v1/models", headers=auth).json()["count"] == 1


def test_jobs_on_an_uploaded_gguf_and_a_gpt2_archive(sqlite_server, gguf_bytes, tmp_path):
    api = sqlite_server.client()
    tag = uuid.uuid4().hex[:6]
    uploads = {"gguf": (f"tiny-{tag}.gguf", gguf_bytes), "gpt2": (f"gpt2-{tag}.zip", _gpt2_zip(tmp_path))}
    jobs = {}
    for case, (filename, content) in uploads.items():
        r = api.post("/v1/models", files={"file": (filename, content)},
                     data={"name": Path(filename).stem})
        assert r.status_code == 201, r.text
        r = api.post("/v1/jobs", json={**CHEAP, "model": Path(filename).stem})
        assert r.status_code == 202, r.text
        jobs[case] = r.json()["id"]
    for case, job_id in jobs.items():
        done = wait_for(api, job_id, finished, JOB_TIMEOUT_S, sqlite_server.tail)
        assert done["status"] == "succeeded", done["error"]
        result = api.get(f"/v1/jobs/{job_id}/result").json()
        quality = result["quality"]
        assert quality["metric"] == "perplexity" and quality["directions"]["perplexity"] == "lower"
        assert quality["full_precision"]["top1_agreement"] == 100.0
        assert result["model"]["quantizable_share_pct"] == 100.0
        kinds = {layer["name"]: layer["kind"] for layer in result["layers"]}
        if case == "gguf":
            assert result["model"]["source"] == "uploaded GGUF file, dequantized to fp32"
            assert len(kinds) == 1 + 2 * 7 and kinds["model.embed_tokens"] == "embedding"
        else:
            assert kinds["transformer.h.0.attn.c_attn"] == "hf_conv1d"
            assert len(kinds) == 2 + 2 * 4 and "lm_head" not in kinds
