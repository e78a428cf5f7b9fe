"""The service's job runtime: the Celery app (`bitalloc worker`, or
`celery -A service.worker.celery_app worker`), its tasks (run a job; take shards
of a job's sensitivity stage, `service.worker.shards`), the runner that claims a
job row, runs the pipeline and records how it ended, and the reaper that re-queues
jobs whose worker died. Database-backed, so it lives with the service; the pipeline
(`workers.pipeline`, and torch behind it) is imported only inside the tasks, when a
job or a shard runs."""
