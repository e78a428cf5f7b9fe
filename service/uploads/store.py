"""Turn a received upload into a stored model or dataset: check the form,
check the file, move it into the tenant's folder, then insert the row. Any
failure removes what was written, so a rejected upload leaves nothing behind."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

from sqlalchemy.orm import Session

from sensitivity.data.formats import GGUF_SUFFIX
from sensitivity.data.gguf_header import read_gguf_header
from service import crud, storage
from service.config import Settings
from service.db.models import Dataset, StoredModel, Tenant
from service.schemas import NAME_PATTERN
from service.uploads import UploadError
from service.uploads.archives import Limits, extract, is_archive
from service.uploads.checks import check_dataset, check_hf_dir
from service.uploads.receive import Received
from service.uploads.safetensors_check import check_finite, check_safetensors
from workers.manifest import builtin_model_names

MODEL_FIELDS = {"name", "architecture"}
WEIGHT_DTYPES = ("F32", "F16", "BF16", "F64")  # what a built-in architecture's weights may be
# integer buffers a torch state_dict carries beside the weights (BatchNorm's counter,
# a transformer's position ids): allowed as integers
INTEGER_BUFFERS = ("num_batches_tracked", "position_ids")
DATASET_FIELDS = {"name"}


def store_model(session: Session, settings: Settings, tenant: Tenant,
                received: Received) -> StoredModel:
    try:
        return _store_model(session, settings, tenant, received)
    finally:
        storage.remove(received.path)


def store_dataset(session: Session, settings: Settings, tenant: Tenant,
                  received: Received) -> Dataset:
    try:
        return _store_dataset(session, settings, tenant, received)
    finally:
        storage.remove(received.path)


def _store_model(session: Session, settings: Settings, tenant: Tenant,
                 received: Received) -> StoredModel:
    name = _name(session, StoredModel, tenant, received)
    architecture = received.fields.get("architecture", "").strip()
    model_id = uuid.uuid4()
    final = storage.model_dir(settings, tenant.id, model_id)
    work = storage.staging(settings) / f"{model_id}.dir"
    try:
        work.mkdir()
        if received.filename.lower().endswith(GGUF_SUFFIX):
            kind = "gguf"
            architecture, manifest = _gguf(received, architecture, work)
        elif architecture:
            kind, manifest = "state_dict", _state_dict(received, architecture, work)
        else:
            kind = "hf"
            architecture, manifest = _hf_archive(received, work, settings)
        final.parent.mkdir(parents=True, exist_ok=True)
        work.rename(final)
        row = StoredModel(id=model_id, tenant_id=tenant.id, name=name, kind=kind,
                          architecture=architecture, filename=received.filename,
                          size_bytes=received.size, sha256=received.sha256,
                          path=storage.relative(settings, final), manifest=manifest)
        return crud.add_upload(session, row)
    except BaseException:
        storage.remove(work)
        storage.remove(final)
        raise


def _store_dataset(session: Session, settings: Settings, tenant: Tenant,
                   received: Received) -> Dataset:
    name = _name(session, Dataset, tenant, received)
    fmt, manifest = check_dataset(received.path, received.filename)
    dataset_id = uuid.uuid4()
    final = storage.dataset_dir(settings, tenant.id, dataset_id)
    suffix = Path(received.filename).suffix.lower()
    try:
        final.mkdir(parents=True)
        target = final / f"data{suffix}"
        shutil.move(received.path, target)
        row = Dataset(id=dataset_id, tenant_id=tenant.id, name=name, format=fmt,
                      filename=received.filename, size_bytes=received.size,
                      sha256=received.sha256, path=storage.relative(settings, target),
                      manifest=manifest)
        return crud.add_upload(session, row)
    except BaseException:
        storage.remove(final)
        raise


def _name(session: Session, cls, tenant: Tenant, received: Received) -> str:
    name = received.fields.get("name", "").strip()
    if not name:
        raise UploadError(422, "form field `name` is required")
    if len(name) > 100 or not re.match(NAME_PATTERN, name):
        raise UploadError(422, "name must be 1-100 letters, digits, '.', '_' or '-', "
                               "starting with a letter or digit")
    if name in builtin_model_names() and cls is StoredModel:
        raise UploadError(409, f"{name!r} is a built-in model; choose another name")
    if crud.upload_name_taken(session, cls, tenant.id, name):
        kind = "model" if cls is StoredModel else "dataset"
        raise UploadError(409, f"a {kind} named {name!r} already exists")
    return name


def _state_dict(received: Received, architecture: str, work: Path) -> dict:
    if architecture not in builtin_model_names():
        raise UploadError(422, f"unknown architecture {architecture!r}; built-in "
                               f"architectures: {', '.join(builtin_model_names())} (leave "
                               "`architecture` out to upload a Hugging Face model archive)")
    if not received.filename.lower().endswith(".safetensors"):
        raise UploadError(422, "a state dict must be a .safetensors file (pickled weights "
                               "are never loaded)")
    info = check_safetensors(received.path, received.filename)
    if not info.tensors:
        raise UploadError(422, f"{received.filename} holds no tensors")
    wrong = sorted(f"{k} ({t.dtype})" for k, t in info.tensors.items()
                   if t.dtype not in WEIGHT_DTYPES and not (
                       k.rsplit(".", 1)[-1] in INTEGER_BUFFERS and t.dtype in ("I64", "I32")))
    if wrong:
        raise UploadError(422, f"{received.filename}: weights of {architecture} must be "
                               f"floating point ({', '.join(WEIGHT_DTYPES)}); got "
                               f"{', '.join(wrong[:5])}")
    check_finite(received.path, info, received.filename)
    shutil.move(received.path, work / "model.safetensors")
    return {"weights": info.summary(), "metadata": dict(list(info.metadata.items())[:50])}


def _gguf(received: Received, architecture: str, work: Path) -> tuple[str, dict]:
    """A GGUF causal language model: its header checked (magic bytes, version, the
    architecture it names); the worker dequantizes it when a job loads it."""
    if architecture:
        raise UploadError(422, "a GGUF file names its architecture itself; leave the form "
                               "field `architecture` out")
    try:
        header = read_gguf_header(received.path)
    except (ValueError, OSError) as exc:
        raise UploadError(422, f"{received.filename}: {exc}") from None
    shutil.move(received.path, work / "model.gguf")
    return header.architecture, {"gguf": {"version": header.version, "tensors": header.tensors,
                                          "metadata_entries": header.metadata_entries,
                                          "name": header.name[:200]}}


def _hf_archive(received: Received, work: Path, settings: Settings) -> tuple[str, dict]:
    if received.filename.lower().endswith(".safetensors"):
        raise UploadError(422, "a bare .safetensors file needs the form field `architecture` "
                               f"(one of {', '.join(builtin_model_names())})")
    if not is_archive(received.path):
        raise UploadError(422, f"{received.filename} is not a zip or tar archive of a Hugging "
                               "Face model folder")
    limits = Limits(settings.max_archive_members, settings.max_extracted_bytes,
                    settings.max_compression_ratio)
    files = extract(received.path, work, limits)
    return check_hf_dir(work, files)
