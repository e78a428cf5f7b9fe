"""/v1/models: upload and list models (a Hugging Face folder as zip/tar, a built-in
architecture's safetensors state dict, or a GGUF causal language model)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from service import crud
from service.api.deps import ModelDep, SessionDep, SettingsDep, TenantDep
from service.api.routes.uploads import multipart_body, receive_and_store
from service.db.models import StoredModel
from service.schemas import ModelPublic, ModelsPublic, Page
from service.uploads.store import MODEL_FIELDS, store_model
from workers.manifest import builtin_model_names

router = APIRouter(prefix="/models", tags=["models"])

FORM = {"name": "your name for the model (letters, digits, . _ -)",
        "architecture": f"for a safetensors state dict: one of {', '.join(builtin_model_names())}; "
                        "leave out for a Hugging Face model archive (.zip, .tar, .tar.gz) "
                        "or a GGUF file (.gguf)"}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelPublic,
             openapi_extra=multipart_body(FORM),
             responses={409: {"description": "name taken"}, 413: {"description": "too large"},
                        415: {"description": "not multipart/form-data"},
                        422: {"description": "the file failed a check; the reason says which"}})
async def upload_model(request: Request, session: SessionDep, settings: SettingsDep,
                       tenant: TenantDep) -> ModelPublic:
    row = await receive_and_store(request, settings, tenant, session, MODEL_FIELDS, store_model)
    return ModelPublic.model_validate(row)


@router.get("", response_model=ModelsPublic)
def list_models(session: SessionDep, tenant: TenantDep,
                page: Annotated[Page, Query()]) -> ModelsPublic:
    rows, count = crud.list_uploads(session, StoredModel, tenant.id, page.limit, page.offset)
    return ModelsPublic(data=[ModelPublic.model_validate(r) for r in rows], count=count)


@router.get("/{model_id}", response_model=ModelPublic)
def get_model(model: ModelDep) -> ModelPublic:
    return ModelPublic.model_validate(model)
