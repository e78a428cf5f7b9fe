"""A job's statuses, declared once for the database, the API schema, the metrics
and the Python client (standard library only, so the client may import it)."""

from __future__ import annotations

from typing import Literal, get_args

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
ACTIVE = ("queued", "running")  # a worker has it or will
FINISHED = ("succeeded", "failed", "cancelled")  # it will not change again
