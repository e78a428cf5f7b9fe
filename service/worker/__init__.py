"""The service's job runtime: the Celery app (`bitalloc worker`, or
`celery -A service.worker.celery_app worker`), its one task, the runner that
claims a job row, runs the pipeline and records how it ended, and the reaper
that re-queues jobs whose worker died. Database-backed, so it lives with the
service; the pipeline (`workers.pipeline`, and torch behind it) is imported only
inside the task, when a job runs."""
