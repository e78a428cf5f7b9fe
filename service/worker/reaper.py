"""A thread in every worker that finds jobs whose worker stopped heartbeating
(killed, out of memory, machine lost) and re-queues or fails them, so no job
stays "running" forever; it also re-sends queued jobs whose message was lost."""

from __future__ import annotations

import logging
import threading

from celery import Celery

from service import broker, crud
from service.config import Settings
from service.db.session import session_factory

log = logging.getLogger(__name__)


class Reaper:
    def __init__(self, app: Celery, settings: Settings):
        self.app, self.settings = app, settings
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def run_once(self) -> int:
        """One sweep; returns how many jobs were sent again."""
        s = self.settings
        with session_factory(s.db_url)() as session:
            to_send = crud.reap(session, heartbeat_timeout_s=s.heartbeat_timeout_s,
                                requeue_queued_after_s=s.requeue_queued_after_s,
                                max_attempts=s.max_attempts)
        for job_id, task_id in to_send:
            log.warning("re-queuing job %s as delivery %s", job_id, task_id)
            broker.send_job(self.app, s, str(job_id), task_id)
        return len(to_send)

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="bitalloc-reaper",
                                           daemon=True)
            self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _loop(self) -> None:
        while not self.stopped.wait(self.settings.reaper_interval_s):
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 (try again next sweep)
                log.exception("reaper sweep failed")
