"""Uploads from pipelines: `Client.upload_model / upload_dataset / models /
datasets` and `bitalloc upload model|dataset`, `bitalloc models|datasets`
against a live server, and the multipart body streamed in chunks."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from python_multipart.multipart import MultipartParser, parse_options_header

from service import client as client_module
from service.client import UPLOAD_CHUNK_BYTES, BadRequest, Client, multipart_form


def _parse(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """The form as the server's parser reads it: (text fields, files name → (filename, bytes))."""
    _, options = parse_options_header(content_type)
    parts, current = [], {}

    def on_header_value(data, start, end):
        current["value"] = current.get("value", b"") + data[start:end]

    def on_header_end():
        current.setdefault("headers", []).append(current.pop("value"))

    def on_part_data(data, start, end):
        current["data"] = current.get("data", b"") + data[start:end]

    parser = MultipartParser(options[b"boundary"], {
        "on_part_begin": lambda: current.clear(), "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data,
        "on_part_end": lambda: parts.append(dict(current))})
    parser.write(body)
    parser.finalize()
    fields, files = {}, {}
    for part in parts:
        _, disposition = parse_options_header(part["headers"][0])  # Content-Disposition
        name = disposition[b"name"].decode()
        if b"filename" in disposition:
            files[name] = (disposition[b"filename"].decode(), part.get("data", b""))
        else:
            fields[name] = part.get("data", b"").decode()
    return fields, files


def test_the_body_is_streamed_in_chunks(tmp_path):
    payload = bytes(range(256)) * 10  # 2,560 bytes
    path = tmp_path / 'odd "name".bin'
    path.write_bytes(payload)
    content_type, length, chunks = multipart_form({"name": "w", "architecture": "digits-cnn"},
                                                  path, chunk_bytes=1000)
    pieces = list(chunks)
    assert [len(p) for p in pieces[1:-1]] == [1000, 1000, 560]
    assert sum(map(len, pieces)) == length
    fields, files = _parse(content_type, b"".join(pieces))
    assert fields == {"name": "w", "architecture": "digits-cnn"}
    assert files == {"file": ("odd %22name%22.bin", payload)}


class Answer(io.BytesIO):
    status = 201


def test_the_client_hands_urllib_chunks_and_a_length(tmp_path, monkeypatch):
    path = tmp_path / "big.safetensors"
    path.write_bytes(b"\1" * (3 * UPLOAD_CHUNK_BYTES + 5))
    sent = {}

    def fake_open(req, timeout):
        assert not isinstance(req.data, bytes | bytearray)  # never the whole body at once
        sent["sizes"] = [len(chunk) for chunk in req.data]
        sent["length"] = int(req.get_header("Content-length"))
        sent["type"] = req.get_header("Content-type")
        return Answer(b'{"id": "x", "name": "big"}')

    monkeypatch.setattr(client_module._OPENER, "open", fake_open)
    row = Client("http://bitalloc.invalid", "ba_x").upload_model(path, "big", "digits-cnn")
    assert row == {"id": "x", "name": "big"}
    assert max(sent["sizes"]) == UPLOAD_CHUNK_BYTES and len(sent["sizes"]) == 6  # head, 4, tail
    assert sum(sent["sizes"]) == sent["length"]
    assert sent["type"].startswith("multipart/form-data; boundary=")


@pytest.fixture
def digits_files(digits_bundle, tmp_path):
    """A digits-cnn state dict and 128 labelled training images, as safetensors."""
    from safetensors.torch import save_file

    from sensitivity.data.digits import load_digits_split

    weights, calib = tmp_path / "weights.safetensors", tmp_path / "calib.safetensors"
    save_file({k: v.contiguous() for k, v in digits_bundle.model.state_dict().items()}, weights)
    split = load_digits_split()
    save_file({"inputs": split.x_train[:128].contiguous(),
               "labels": split.y_train[:128].contiguous()}, calib)
    return weights, calib


def test_upload_then_run_a_job_on_the_uploads(pipeline_server, digits_files):
    weights, calib = digits_files
    client = Client(pipeline_server.url, pipeline_server.key)
    model = client.upload_model(weights, "cu-cnn", architecture="digits-cnn")
    data = client.upload_dataset(calib, "cu-calib")
    assert (model["name"], model["kind"], model["architecture"]) == ("cu-cnn", "state_dict", "digits-cnn")
    assert model["size_bytes"] == weights.stat().st_size
    assert (data["name"], data["format"], data["size_bytes"]) == \
        ("cu-calib", "safetensors", calib.stat().st_size)
    assert model["id"] in {m["id"] for m in client.models()}
    assert data["id"] in {d["id"] for d in client.datasets()}

    job, result = client.run({"model": "cu-cnn", "dataset": data["id"], "method": "fisher",
                              "pareto_points": 0, "budgets": {"avg_bits": 4}}, timeout_s=300)
    assert job["status"] == "succeeded"
    assert "uploaded dataset 'cu-calib'" in result["model"]["calibration"]
    assert result["model"]["source"].startswith("uploaded weights on the built-in digits-cnn")
    assert result["quality"]["metric"] == "accuracy"

    with pytest.raises(BadRequest) as taken:  # no silent retry, no second row
        client.upload_dataset(calib, "cu-calib")
    assert taken.value.status == 409 and taken.value.detail == "a dataset named 'cu-calib' already exists"
    assert [d["name"] for d in client.datasets()].count("cu-calib") == 1


def test_refused_uploads_raise_bad_request_with_the_reason(pipeline_server, tmp_path):
    client = Client(pipeline_server.url, pipeline_server.key)
    pickled = tmp_path / "weights.pt"
    pickled.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(BadRequest) as bad:
        client.upload_model(pickled, "cu-pickled", architecture="digits-cnn")
    assert bad.value.status == 422 and "must be a .safetensors file" in bad.value.detail
    with pytest.raises(BadRequest) as bad:
        client.upload_model(pickled, "cu-pickled", architecture="resnet9000")
    assert bad.value.status == 422 and "unknown architecture 'resnet9000'" in bad.value.detail
    huge = tmp_path / "huge.safetensors"  # sparse: 5 GiB on paper, over the 4 GiB limit
    with open(huge, "wb") as file:
        file.truncate(5 << 30)
    with pytest.raises(BadRequest) as bad:  # answered from Content-Length, before the body
        client.upload_model(huge, "cu-huge", architecture="digits-cnn")
    assert bad.value.status == 413 and "larger than the limit" in bad.value.detail
    with pytest.raises(FileNotFoundError):
        client.upload_dataset(tmp_path / "missing.safetensors", "cu-missing")


def bitalloc(env, *args):
    return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_upload_and_list(pipeline_env, digits_files):
    weights, calib = digits_files
    out = bitalloc(pipeline_env, "upload", "model", str(weights), "--name", "cli-cnn",
                   "--architecture", "digits-cnn")
    assert out.returncode == 0, out.stderr
    model_id, name = out.stdout.split()
    assert name == "cli-cnn"
    out = bitalloc(pipeline_env, "upload", "dataset", str(calib), "--name", "cli-calib", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["name"] == "cli-calib" and data["manifest"]

    out = bitalloc(pipeline_env, "models")
    assert out.returncode == 0 and f"{model_id} cli-cnn digits-cnn (state_dict, " in out.stdout
    out = bitalloc(pipeline_env, "datasets", "--json")
    assert out.returncode == 0 and data["id"] in {d["id"] for d in json.loads(out.stdout)}


def test_cli_refused_uploads_exit_2_with_the_reason(pipeline_env, tmp_path):
    pickled = tmp_path / "weights.pt"
    pickled.write_bytes(b"\x80\x04not really a pickle")
    out = bitalloc(pipeline_env, "upload", "model", str(pickled), "--name", "cli-pickled",
                   "--architecture", "digits-cnn")
    assert out.returncode == 2 and out.stderr == ("error: a state dict must be a .safetensors "
                                                  "file (pickled weights are never loaded)\n")
    out = bitalloc(pipeline_env, "upload", "model", str(pickled), "--name", "cli-pickled")
    assert out.returncode == 2 and out.stderr.startswith("error: weights.pt is not a zip or tar")
    out = bitalloc(pipeline_env, "upload", "dataset", str(tmp_path / "missing.txt"), "--name", "x")
    assert out.returncode == 2 and out.stderr.startswith("error: no such file: ")
    out = bitalloc({**pipeline_env, "BITALLOC_URL": "http://127.0.0.1:9"}, "upload", "dataset",
                   str(pickled), "--name", "x")
    assert out.returncode == 3 and out.stderr.startswith("error: cannot reach http://127.0.0.1:9")
