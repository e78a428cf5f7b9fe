"""Uploads of models and calibration data: good ones are stored with a checksum
and a manifest; every bad class gives a 4xx with its reason and leaves no row
and no file behind."""

from __future__ import annotations

import hashlib
import zipfile

import pytest
from svc_files import hf_files, safetensors_bytes, tar_bytes, zip_bytes
from svc_helpers import make_settings, new_key

LIMIT = 200_000


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path, max_upload_bytes=LIMIT, max_extracted_bytes=300_000,
                         max_archive_members=20)


def upload(client, auth, what: str, filename: str, content: bytes, **fields):
    return client.post(f"/v1/{what}", headers=auth, files={"file": (filename, content)},
                       data=fields)


def stored_files(settings) -> list[str]:
    root = settings.data_path
    return sorted(str(p.relative_to(root)) for sub in ("tenants", "staging")
                  if (root / sub).exists() for p in (root / sub).rglob("*") if p.is_file())


def assert_nothing_stored(client, auth, settings, what: str) -> None:
    assert client.get(f"/v1/{what}", headers=auth).json()["count"] == 0
    assert stored_files(settings) == []


# --- models ------------------------------------------------------------------------


def test_hf_zip_is_stored_with_checksum_and_manifest(client, auth, settings):
    content = zip_bytes(hf_files())
    r = upload(client, auth, "models", "tiny-bert.zip", content, name="tiny-bert")
    assert r.status_code == 201, r.text
    model = r.json()
    assert model["kind"] == "hf" and model["architecture"] == "bert"
    assert model["sha256"] == hashlib.sha256(content).hexdigest()
    assert model["size_bytes"] == len(content)
    assert model["manifest"]["weights"]["params"] == 30 * 8 + 8 * 8
    assert model["manifest"]["tokenizer"] == ["tokenizer.json", "vocab.txt"]
    folder = settings.data_path / "tenants"
    assert len(list(folder.rglob("config.json"))) == 1
    listed = client.get("/v1/models", headers=auth).json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == model["id"]
    assert client.get(f"/v1/models/{model['id']}", headers=auth).json()["name"] == "tiny-bert"


def test_hf_tar_in_one_folder_and_state_dict(client, auth):
    files = {f"my-model/{k}": v for k, v in hf_files().items()}
    r = upload(client, auth, "models", "m.tar.gz", tar_bytes(files), name="m1")
    assert r.status_code == 201, r.text
    assert r.json()["manifest"]["root"] == "my-model"
    weights = safetensors_bytes({"fc1.weight": ("F32", (64, 64)), "fc1.bias": ("F32", (64,))})
    r = upload(client, auth, "models", "digits.safetensors", weights, name="m2",
               architecture="digits-cnn")
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "state_dict"
    assert r.json()["manifest"]["weights"]["params"] == 64 * 64 + 64


def _corrupt_safetensors() -> bytes:
    good = safetensors_bytes({"w": ("F32", (4, 4))})
    return good[:-8]  # tensors cover more than the file holds


BAD_MODELS = [
    ("not an archive", "m.zip", b"just some bytes" * 10, {}, 422, "not a zip or tar archive"),
    ("path traversal", "m.zip", zip_bytes({**hf_files(), "../evil.txt": b"x"}), {}, 422,
     "points outside the archive"),
    ("absolute path", "m.zip", zip_bytes({**hf_files(), "/etc/evil": b"x"}), {}, 422,
     "absolute path"),
    ("zip symlink", "m.zip", zip_bytes(hf_files(), symlinks={"link": "/etc/passwd"}), {}, 422,
     "symbolic link"),
    ("tar symlink", "m.tgz", tar_bytes(hf_files(), symlink=("link", "/etc/passwd")), {}, 422,
     "is a link"),
    ("tar hard link", "m.tgz", tar_bytes(hf_files(), hardlink=("link", "config.json")), {}, 422,
     "is a link"),
    ("tar fifo", "m.tgz", tar_bytes(hf_files(), fifo="pipe"), {}, 422, "not a regular file"),
    ("duplicate member", "m.zip", zip_bytes({**hf_files(), "./config.json": b"{}"}), {}, 422,
     "appears twice"),
    ("too many members", "m.zip", zip_bytes({**hf_files(), **{f"f{i}": b"" for i in range(20)}}),
     {}, 413, "more than 20 members"),
    ("zip bomb", "m.zip", zip_bytes({**hf_files(), "zeros": bytes(2_000_000)}), {}, 422,
     "zip bomb"),
    ("expands past the cap", "m.tgz", tar_bytes({**hf_files(), "zeros": bytes(400_000)}), {},
     413, "over the limit"),
    ("damaged zip", "m.zip", zip_bytes(hf_files())[:-30], {}, 422, "zip or tar"),
    ("no config.json", "m.zip", zip_bytes(hf_files(**{"config.json": None})), {}, 422,
     "no config.json"),
    ("config not JSON", "m.zip", zip_bytes(hf_files(**{"config.json": b"{nope"})), {}, 422,
     "config.json is not valid JSON"),
    ("config without model_type", "m.zip", zip_bytes(hf_files(**{"config.json": b"{}"})), {}, 422,
     "with a model_type"),
    ("unknown architecture", "m.zip",
     zip_bytes(hf_files(**{"config.json": b'{"model_type": "warp-drive"}'})), {}, 422,
     "not an architecture the installed transformers can build"),
    ("pickled weights", "m.zip", zip_bytes(hf_files(**{"pytorch_model.bin": b"\x80\x04..."})),
     {}, 422, "pickled files are never loaded"),
    ("no safetensors", "m.zip", zip_bytes(hf_files(**{"model.safetensors": None})), {}, 422,
     "no *.safetensors weights"),
    ("corrupt safetensors", "m.zip",
     zip_bytes(hf_files(**{"model.safetensors": _corrupt_safetensors()})), {}, 422,
     "not a valid safetensors file"),
    ("safetensors header too long", "w.safetensors", b"\xff" * 8 + b"{}", {"architecture":
     "digits-cnn"}, 422, "header length"),
    ("state dict of unknown architecture", "w.safetensors", safetensors_bytes(
        {"w": ("F32", (2,))}), {"architecture": "resnet9000"}, 422, "unknown architecture"),
    ("pickled state dict", "w.pt", b"\x80\x04pickle", {"architecture": "digits-cnn"}, 422,
     "must be a .safetensors file"),
    ("bare safetensors", "w.safetensors", safetensors_bytes({"w": ("F32", (2,))}), {}, 422,
     "needs the form field `architecture`"),
    ("too large", "m.zip", bytes(LIMIT + 1), {}, 413, "larger than the limit"),
    ("bad name", "m.zip", zip_bytes(hf_files()), {"name": "../etc"}, 422, "name must be"),
    ("built-in name", "m.zip", zip_bytes(hf_files()), {"name": "digits-cnn"}, 409, "built-in"),
    ("unknown field", "m.zip", zip_bytes(hf_files()), {"colour": "red"}, 422,
     "unknown form field 'colour'"),
]


@pytest.mark.parametrize("case, filename, content, fields, status, reason", BAD_MODELS,
                         ids=[c[0] for c in BAD_MODELS])
def test_bad_model_upload_is_refused_with_reason(client, auth, settings, case, filename,
                                                 content, fields, status, reason):
    r = upload(client, auth, "models", filename, content, **{"name": "m", **fields})
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"]
    assert_nothing_stored(client, auth, settings, "models")


def test_malformed_requests(client, auth, settings):
    r = client.post("/v1/models", headers=auth, json={"name": "m"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    r = client.post("/v1/models", headers=auth, data={"name": "m"}, files={"x": ("a", b"")})
    assert r.status_code == 422 and "unknown form field 'x'" in r.json()["detail"]
    r = client.post("/v1/models", headers=auth, files={"file": ("m.zip", zip_bytes(hf_files()))})
    assert r.status_code == 422 and "`name` is required" in r.json()["detail"]
    assert_nothing_stored(client, auth, settings, "models")


def test_duplicate_name_conflicts_and_keeps_the_first(client, auth, settings):
    content = zip_bytes(hf_files())
    assert upload(client, auth, "models", "m.zip", content, name="m").status_code == 201
    before = stored_files(settings)
    r = upload(client, auth, "models", "m.zip", content, name="m")
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    assert client.get("/v1/models", headers=auth).json()["count"] == 1
    assert stored_files(settings) == before


def test_uploads_are_per_tenant(client, auth, settings):
    r = upload(client, auth, "models", "m.zip", zip_bytes(hf_files()), name="m")
    other = new_key(settings, "globex")
    assert client.get("/v1/models", headers=other).json()["count"] == 0
    assert client.get(f"/v1/models/{r.json()['id']}", headers=other).status_code == 404
    # the same name is free in another tenant
    assert upload(client, other, "models", "m.zip", zip_bytes(hf_files()),
                  name="m").status_code == 201


# --- datasets ----------------------------------------------------------------------


def test_good_datasets(client, auth, settings):
    tensors = safetensors_bytes({"inputs": ("F32", (16, 1, 8, 8)), "labels": ("I64", (16,))})
    r = upload(client, auth, "datasets", "calib.safetensors", tensors, name="calib")
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "safetensors"
    assert r.json()["manifest"] == {"samples": 16, "has_labels": True,
                                    "inputs": {"dtype": "F32", "shape": [16, 1, 8, 8]}}
    r = upload(client, auth, "datasets", "lines.txt", "one\n\ntwo\nthree ü\n".encode(),
               name="lines")
    assert r.status_code == 201 and r.json()["manifest"]["samples"] == 3
    jsonl = b'"plain"\n{"text": "with label", "label": 1}\n'
    r = upload(client, auth, "datasets", "mixed.jsonl", jsonl, name="mixed")
    assert r.status_code == 422 and "every line a label or none" in r.json()["detail"]
    r = upload(client, auth, "datasets", "t.jsonl", b'{"text": "a"}\n"b"\n', name="t")
    assert r.status_code == 201 and r.json()["format"] == "jsonl"
    assert client.get("/v1/datasets", headers=auth).json()["count"] == 3
    data = settings.data_path / "tenants"
    assert sorted(p.name for p in data.rglob("data.*")) == ["data.jsonl", "data.safetensors",
                                                             "data.txt"]


BAD_DATASETS = [
    ("unknown format", "calib.csv", b"a,b\n1,2\n", 415, "unsupported calibration file"),
    ("no inputs", "c.safetensors", safetensors_bytes({"labels": ("I64", (4,))}), 422,
     "no `inputs` tensor"),
    ("labels mismatch", "c.safetensors", safetensors_bytes(
        {"inputs": ("F32", (4, 3)), "labels": ("I64", (5,))}), 422, "has 5 rows but `inputs` has 4"),
    ("unexpected tensor", "c.safetensors", safetensors_bytes(
        {"inputs": ("F32", (4, 3)), "weights": ("F32", (3,))}), 422, "unexpected tensors weights"),
    ("bad dtype", "c.safetensors", safetensors_bytes({"inputs": ("F32", (2,))}).replace(
        b'"F32"', b'"F99"'), 422, "unknown dtype 'F99'"),
    ("not UTF-8", "c.txt", b"ok\n\xff\xfe\n", 422, "line 2 is not UTF-8"),
    ("empty text", "c.txt", b"\n\n  \n", 422, "holds no text"),
    ("bad JSON line", "c.jsonl", b'"ok"\n{oops\n', 422, "line 2 is not JSON"),
    ("JSON without text", "c.jsonl", b'{"prompt": "x"}\n', 422, "expected a string or an object"),
]


@pytest.mark.parametrize("case, filename, content, status, reason", BAD_DATASETS,
                         ids=[c[0] for c in BAD_DATASETS])
def test_bad_dataset_upload_is_refused_with_reason(client, auth, settings, case, filename,
                                                   content, status, reason):
    r = upload(client, auth, "datasets", filename, content, name="d")
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"]
    assert_nothing_stored(client, auth, settings, "datasets")


def test_zip_of_model_is_extracted_member_by_member(tmp_path):
    """A member whose data is longer than its header says is refused."""
    from service.uploads import UploadError
    from service.uploads.archives import Limits, extract

    path = tmp_path / "m.zip"
    path.write_bytes(zip_bytes({"a.txt": b"hello"}, compression=zipfile.ZIP_STORED))
    raw = bytearray(path.read_bytes())
    # shrink the declared size in the central directory (data stays 5 bytes)
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24:cd + 28] = (3).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(UploadError):
        extract(path, dest, Limits(10, 10_000, 100))
