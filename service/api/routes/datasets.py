"""/v1/datasets: upload and list calibration data (safetensors tensors `inputs`
and optional `labels`, or text lines / JSON lines for text models)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from service import crud
from service.api.deps import DatasetDep, SessionDep, SettingsDep, TenantDep
from service.api.routes.uploads import multipart_body, receive_and_store
from service.db.models import Dataset
from service.schemas import DatasetPublic, DatasetsPublic, Page
from service.uploads.store import DATASET_FIELDS, store_dataset

router = APIRouter(prefix="/datasets", tags=["datasets"])

FORM = {"name": "your name for the dataset (letters, digits, . _ -)"}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetPublic,
             openapi_extra=multipart_body(FORM),
             responses={409: {"description": "name taken"}, 413: {"description": "too large"},
                        415: {"description": "unsupported content or file type"},
                        422: {"description": "the file failed a check; the reason says which"}})
async def upload_dataset(request: Request, session: SessionDep, settings: SettingsDep,
                         tenant: TenantDep) -> DatasetPublic:
    row = await receive_and_store(request, settings, tenant, session, DATASET_FIELDS,
                                  store_dataset)
    return DatasetPublic.model_validate(row)


@router.get("", response_model=DatasetsPublic)
def list_datasets(session: SessionDep, tenant: TenantDep,
                  page: Annotated[Page, Query()]) -> DatasetsPublic:
    rows, count = crud.list_uploads(session, Dataset, tenant.id, page.limit, page.offset)
    return DatasetsPublic(data=[DatasetPublic.model_validate(r) for r in rows], count=count)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset: DatasetDep) -> DatasetPublic:
    return DatasetPublic.model_validate(dataset)
