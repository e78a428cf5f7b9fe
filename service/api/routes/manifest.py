"""/v1/manifest: what a job can name (built-in models and their families, metric
directions, weight widths, budgets), from `workers.manifest`, never a copy."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import TenantDep
from service.schemas import ManifestPublic
from workers.manifest import manifest

router = APIRouter(prefix="/manifest", tags=["manifest"])


@router.get("", response_model=ManifestPublic)
async def get_manifest(_tenant: TenantDep) -> ManifestPublic:
    return ManifestPublic.model_validate(manifest())
