"""Includes the routers; nothing else."""

from fastapi import APIRouter

from service.api.routes import datasets, jobs, manifest, models

api_router = APIRouter()
for module in (jobs, models, datasets, manifest):
    api_router.include_router(module.router)
