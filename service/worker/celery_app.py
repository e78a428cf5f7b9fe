"""The Celery app the workers run: `bitalloc worker`, or
`celery -A service.worker.celery_app worker`. Configuration (broker, late
acknowledgement, time limits, prefetch of one) lives in service.broker, shared
with the API that sends tasks by name."""

from __future__ import annotations

from celery.signals import worker_ready, worker_shutdown

from service.broker import make_celery
from service.config import get_settings
from service.worker.reaper import Reaper

settings = get_settings()
app = make_celery(settings, include=["service.worker.tasks"])
reaper = Reaper(app, settings)


@worker_ready.connect
def _start_reaper(**_kwargs) -> None:
    reaper.start()


@worker_shutdown.connect
def _stop_reaper(**_kwargs) -> None:
    reaper.stop()
