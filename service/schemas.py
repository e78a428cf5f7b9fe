"""What the API accepts and returns. Every field has limits; unknown fields are
rejected. The job request is the pipeline's own `JobSpec` (a plain pydantic
module with no torch behind it) plus the calibration dataset to use."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sensitivity.data.formats import DataFormat, ModelKind
from service.job_status import JobStatus
from workers.spec import JobResult, JobSpec

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- jobs -------------------------------------------------------------------------


class JobCreate(JobSpec):
    """A job: the pipeline's JobSpec; `model` is a built-in model or the name or id
    of one of your uploaded models; `dataset` names your calibration dataset."""

    dataset: str | None = Field(None, min_length=1, max_length=100,
                                description="name or id of an uploaded calibration dataset")

    def job_spec(self) -> JobSpec:
        return JobSpec.model_validate(self.model_dump(exclude={"dataset"}))


class JobFilter(_In):
    status: list[JobStatus] | None = Field(None, max_length=5)
    created_after: datetime | None = None
    created_before: datetime | None = None
    limit: int = Field(20, ge=1, le=100)
    cursor: str | None = Field(None, min_length=1, max_length=200)


class JobPublic(_Out):
    id: uuid.UUID
    status: JobStatus
    stage: str
    stage_progress: float
    progress: float
    message: str
    spec: dict[str, Any]
    model_id: uuid.UUID | None
    dataset_id: uuid.UUID | None
    error: str | None
    attempts: int
    cancel_requested: bool
    idempotency_key: str | None
    timings: dict[str, Any]
    has_result: bool
    has_artifact: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None

    @classmethod
    def of(cls, job) -> JobPublic:
        return cls.model_validate({
            **{name: getattr(job, name) for name in cls.model_fields
               if name not in ("has_result", "has_artifact")},
            "has_result": job.result is not None,
            "has_artifact": job.artifact_path is not None,
        })


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int = Field(description="jobs matching the filters, over all pages")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class JobProgress(_Out):
    id: uuid.UUID
    status: JobStatus
    stage: str
    stage_progress: float
    progress: float
    message: str
    updated_at: datetime


# --- uploads ----------------------------------------------------------------------


class ModelPublic(_Out):
    id: uuid.UUID
    name: str
    kind: ModelKind
    architecture: str
    filename: str
    size_bytes: int
    sha256: str
    manifest: dict[str, Any]
    created_at: datetime


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class DatasetPublic(_Out):
    id: uuid.UUID
    name: str
    format: DataFormat
    filename: str
    size_bytes: int
    sha256: str
    manifest: dict[str, Any]
    created_at: datetime


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


class Page(_In):
    limit: int = Field(50, ge=1, le=200)
    offset: int = Field(0, ge=0, le=1_000_000)


# --- manifest ---------------------------------------------------------------------


class MetricInfo(BaseModel):
    name: str
    direction: Literal["higher", "lower"] = Field(description="which way is better")
    description: str


class FamilyInfo(BaseModel):
    name: str
    description: str
    metrics: list[MetricInfo] = Field(description="quality metrics, the headline first")


class BuiltinModelInfo(BaseModel):
    name: str
    family: str
    description: str


class MethodParameter(BaseModel):
    name: str
    type: str = Field(description="its JSON type: number, integer, boolean, string, …")
    default: Any
    allowed: list[Any] | None = Field(description="the values it may take; null: any of its type")
    requires: dict[str, Any] | None = Field(None, description="only with these other settings")


class MethodInfo(BaseModel):
    name: str
    summary: str
    parameters: list[MethodParameter] = Field(description="what `method_params` may set")


class ExportInfo(BaseModel):
    name: str
    description: str
    weight_bits: list[int]  # the widths the format holds (16: left unquantized)
    symmetric_only: bool
    activation_quantization: bool = False  # stores layers' input quantizers (a_bits < 16)


class ManifestPublic(BaseModel):
    """What a job can name: the built-in models and their families, each family's
    quality metrics with their directions, the sensitivity methods and their
    parameters, the weight widths, the budgets and the export formats (`workers.manifest`, the document
    the CLI and the dashboard read too)."""

    model_config = ConfigDict(extra="allow")  # sections the manifest gains pass through

    models: list[BuiltinModelInfo]
    families: list[FamilyInfo]
    methods: list[MethodInfo]
    weight_bits: list[int]
    budgets: list[str]
    quantizers: list[str]
    exports: list[ExportInfo]


# --- health -----------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    database: str
    broker: str


__all__ = ["JobResult", "JobCreate", "JobFilter", "JobPublic", "JobsPublic", "JobProgress",
           "ModelPublic", "ModelsPublic", "DatasetPublic", "DatasetsPublic", "Page",
           "ManifestPublic", "Health", "Readiness", "NAME_PATTERN"]
