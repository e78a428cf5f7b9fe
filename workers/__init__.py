"""Workers: the job pipeline as a plain function (`run_job`), and the Celery app
and tasks that run it for the service."""
