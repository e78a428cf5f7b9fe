"""/v1/manifest: what a job can name (built-in models and their families, metric
directions, weight widths, budgets), from `workers.manifest`, never a copy."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import TenantDep
from service.schemas import ManifestPublic
from workers.manifest import manifest

router = APIRouter(prefix="/manifest", tags=["manifest"])


# unset: a field the manifest leaves out (a parameter's `requires`) stays out
@router.get("", response_model=ManifestPublic, response_model_exclude_unset=True)
async def get_manifest(_tenant: TenantDep) -> ManifestPublic:
    return ManifestPublic.model_validate(manifest())
