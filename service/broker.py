"""The Celery app both sides share: the API sends tasks by name with it, the
workers (service/worker/celery_app.py) run them. Redis through REDIS_URL, otherwise
kombu's filesystem transport under the data folder, which needs no server."""

from __future__ import annotations

import redis.exceptions
from celery import Celery
from kombu.transport import redis as kombu_redis

from service.config import Settings

RUN_JOB = "bitalloc.run_job"
RUN_SHARD = "bitalloc.run_shard"  # take shards of a job (service.worker.shards)


class _RedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, except that once its connection has been detached it
    fails like an unreachable broker (a connection error, which Celery recovers
    from) instead of with an AttributeError (which stops the worker).

    Why: when Redis goes away while a task is running (unacknowledged, acks_late),
    Celery's consumer first `collect()`s the broken connection, which detaches the
    transport (`transport.client = None`), then `close()`s it again; that second
    close re-runs the channel's close, which tries to put the unacknowledged message
    back and builds a new Redis client from `transport.client.hostname`: an
    "Unrecoverable error: AttributeError: 'NoneType' object has no attribute
    'hostname'", and the worker exits once its running task ends. The task's late
    ack on the old channel takes the same path. Redis is down or restarted at that
    point anyway, so a connection error is the truth; the reaper and the broker's
    visibility timeout take care of the message."""

    def _connparams(self, asynchronous=False):
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection was closed")
        return super()._connparams(asynchronous=asynchronous)


class RedisTransport(kombu_redis.Transport):
    Channel = _RedisChannel


def broker_folders(settings: Settings) -> dict[str, str]:
    root = settings.data_path / "broker"
    folders = {"data_folder_in": root / "queue", "data_folder_out": root / "queue",
               "control_folder": root / "control", "processed_folder": root / "processed"}
    for path in folders.values():
        path.mkdir(parents=True, exist_ok=True)
    return {k: str(v) for k, v in folders.items()}


def make_celery(settings: Settings, include: list[str] | None = None) -> Celery:
    app = Celery("bitalloc", broker=settings.broker_url, include=include or [])
    if settings.redis_url:
        app.conf.broker_transport = f"{__name__}:RedisTransport"
        # a message unacknowledged for longer than this is delivered again: it must
        # outlast the longest job, or a running job would be started twice
        transport = {"visibility_timeout": settings.job_time_limit_s + 600}
    else:
        transport = {**broker_folders(settings), "store_processed": False}
    app.conf.update(
        broker_transport_options=transport,
        broker_connection_timeout=5,
        broker_connection_retry_on_startup=True,
        # a worker waits for its broker however long it is away (Celery's default
        # gives up after 100 attempts, and the worker exits)
        broker_connection_max_retries=None,
        # a running job keeps running when the broker connection drops: its claim in
        # the database fences it, and hours of work are not thrown away
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_default_queue=settings.queue,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2,
                                   "interval_step": 0.5, "interval_max": 1.0},
        worker_prefetch_multiplier=1,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_soft_time_limit=settings.job_soft_time_limit_s,
        task_time_limit=settings.job_time_limit_s,
        worker_concurrency=settings.worker_concurrency,
        worker_hijack_root_logger=False,
        broker_pool_limit=4,
        timezone="UTC",
    )
    return app


def send_job(app: Celery, settings: Settings, job_id: str, task_id: str) -> None:
    app.send_task(RUN_JOB, args=[job_id], task_id=task_id, queue=settings.queue)


def send_shards(app: Celery, settings: Settings, job_id: str, count: int) -> None:
    """`count` messages that each have a worker take shards of the job, if any are left."""
    for _ in range(count):
        app.send_task(RUN_SHARD, args=[job_id], queue=settings.shard_queue_name,
                      expires=settings.shard_message_ttl_s)


def revoke(app: Celery, task_id: str) -> None:
    """Best effort: drop a queued delivery (the worker also checks the database)."""
    app.control.revoke(task_id)


def broker_reachable(app: Celery) -> str:
    """'ok' or why not."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
        return "ok"
    except Exception as exc:  # noqa: BLE001 (any failure means not ready)
        return f"unreachable: {type(exc).__name__}: {exc}"
