"""Where a job's uploads are on disk: its model and calibration dataset as the
pipeline's `ModelSource` / `DataSource`, for the job's worker and for the workers
that compute its shards. Torch-free, so a missing upload fails the job before the
pipeline is loaded."""

from __future__ import annotations

from sensitivity.sources import DataSource, ModelSource
from service import crud, storage
from service.config import Settings
from service.db.models import Dataset, Job, StoredModel
from workers.spec import JobSpec


class NotRunnable(ValueError):
    """A job this worker cannot run, with the reason for the user."""


def job_sources(settings: Settings, sessions, job: Job,
                spec: JobSpec) -> tuple[ModelSource | None, DataSource | None]:
    """The job's uploaded model and dataset as files on disk (torch-free, so a
    missing upload fails the job before the pipeline is loaded)."""
    with sessions() as session:
        model = crud.load_upload(session, StoredModel, job.model_id)
        dataset = crud.load_upload(session, Dataset, job.dataset_id)
        model_source = None if model is None else _model_source(settings, model)
        data_source = None if dataset is None else _data_source(settings, dataset)
    if job.model_id is not None and model is None:
        raise NotRunnable(f"model {spec.model!r} was deleted after the job was submitted")
    if job.dataset_id is not None and dataset is None:
        raise NotRunnable("the job's calibration dataset was deleted after it was submitted")
    return model_source, data_source


def _model_source(settings: Settings, model: StoredModel) -> ModelSource:
    folder = storage.absolute(settings, model.path)
    if model.kind == "hf":
        path = folder / (model.manifest or {}).get("root", "")
        if not (path / "config.json").is_file():
            raise NotRunnable(f"model {model.name!r}: its stored files are missing "
                              f"({storage.relative(settings, path)}/config.json)")
    else:
        path = folder / ("model.gguf" if model.kind == "gguf" else "model.safetensors")
        if not path.is_file():
            raise NotRunnable(f"model {model.name!r}: its stored weights are missing")
    return ModelSource(name=model.name, kind=model.kind, architecture=model.architecture,
                       path=path)


def _data_source(settings: Settings, dataset: Dataset) -> DataSource:
    path = storage.absolute(settings, dataset.path)
    if not path.is_file():
        raise NotRunnable(f"dataset {dataset.name!r}: its stored file is missing")
    return DataSource(name=dataset.name, format=dataset.format, path=path)


