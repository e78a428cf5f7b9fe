"""The data folder: uploads per tenant, artifacts per job, a staging area for
uploads in flight, and the embedded broker's queue."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from service.config import Settings


def staging(settings: Settings) -> Path:
    path = settings.data_path / "staging"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_dir(settings: Settings, tenant_id: uuid.UUID, model_id: uuid.UUID) -> Path:
    return settings.data_path / "tenants" / str(tenant_id) / "models" / str(model_id)


def dataset_dir(settings: Settings, tenant_id: uuid.UUID, dataset_id: uuid.UUID) -> Path:
    return settings.data_path / "tenants" / str(tenant_id) / "datasets" / str(dataset_id)


def job_dir(settings: Settings, job_id: uuid.UUID) -> Path:
    return settings.data_path / "jobs" / str(job_id)


def relative(settings: Settings, path: Path) -> str:
    return path.relative_to(settings.data_path).as_posix()


def absolute(settings: Settings, rel: str) -> Path:
    path = (settings.data_path / rel).resolve()
    if not path.is_relative_to(settings.data_path):
        raise ValueError(f"stored path {rel!r} leaves the data folder")
    return path


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
