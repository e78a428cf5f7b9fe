"""The worker side of a job without Celery: claims and the fence on every write,
the reaper, progress at a bounded rate, and cancellation from the callback."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from service import crud
from service.db.migrate import upgrade
from service.db.models import Job, utcnow
from service.db.session import session_factory
from service.worker.runner import JobCancelled, JobLost, ProgressWriter, overall_progress


@pytest.fixture
def db(settings):
    upgrade(settings.db_url)
    return session_factory(settings.db_url)


@pytest.fixture
def job(db) -> Job:
    with db() as s:
        tenant = crud.get_or_create_tenant(s, "acme")
        job, _ = crud.create_job(s, tenant.id, {"model": "digits-cnn"}, model_id=None,
                                 dataset_id=None, idempotency_key=None, request_hash="h")
        return job


def claim(db, job, task_id=None, stale_s=60.0, max_attempts=3):
    with db() as s:
        return crud.claim_job(s, job.id, task_id or job.task_id, "w1",
                              utcnow() - timedelta(seconds=stale_s), max_attempts)


def age_heartbeat(db, job, seconds: float) -> None:
    with db() as s:
        s.execute(update(Job).where(Job.id == job.id)
                  .values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))
        s.commit()


def load(db, job) -> Job:
    with db() as s:
        return crud.load_job(s, job.id)


def test_claim_runs_once_per_delivery(db, job):
    first = claim(db, job)
    assert first.outcome == "run" and first.attempt == 1
    assert claim(db, job).outcome == "busy"  # same delivery, worker alive
    assert claim(db, job, task_id="someone-else").outcome == "superseded"
    age_heartbeat(db, job, 120)
    takeover = claim(db, job)  # redelivered after its worker died
    assert takeover.outcome == "run" and takeover.attempt == 2
    with db() as s:  # the first worker is fenced out
        assert crud.write_progress(s, job.id, job.task_id, 1, stage="load", stage_progress=0.5,
                                   progress=0.05, message="x") is None
        assert not crud.finish_job(s, job.id, job.task_id, 1, "succeeded", message="done",
                                   result={})
        assert crud.finish_job(s, job.id, job.task_id, 2, "succeeded", message="done",
                               result={"ok": 1})
    assert claim(db, job).outcome == "finished"
    assert load(db, job).status == "succeeded"


def test_claim_gives_up_after_max_attempts(db, job):
    for _ in range(2):
        assert claim(db, job, max_attempts=2).outcome == "run"
        age_heartbeat(db, job, 120)
    assert claim(db, job, max_attempts=2).outcome == "exhausted"
    stored = load(db, job)
    assert stored.status == "failed" and "gave up after 2 attempts" in stored.error


def test_reaper_requeues_then_fails_a_silent_job(db, job):
    def reap():
        with db() as s:
            return crud.reap(s, heartbeat_timeout_s=30, requeue_queued_after_s=3600,
                             max_attempts=2)

    claim(db, job)
    assert reap() == []  # heartbeat is fresh
    age_heartbeat(db, job, 60)
    [(job_id, task_id)] = reap()
    stored = load(db, job)
    assert job_id == job.id and stored.status == "queued" and stored.task_id == task_id != \
        job.task_id
    assert "worker stopped responding during attempt 1 of 2" in stored.message
    assert claim(db, job).outcome == "superseded"  # the old message no longer runs
    assert claim(db, stored).outcome == "run"
    age_heartbeat(db, job, 60)
    assert reap() == []
    stored = load(db, job)
    assert stored.status == "failed" and "giving up" in stored.error


def test_reaper_finishes_cancel_of_a_dead_job_and_resends_lost_messages(db, job):
    claim(db, job)
    with db() as s:
        crud.request_cancel(s, crud.load_job(s, job.id))
    age_heartbeat(db, job, 60)
    with db() as s:
        assert crud.reap(s, heartbeat_timeout_s=30, requeue_queued_after_s=3600,
                         max_attempts=3) == []
    assert load(db, job).status == "cancelled"
    with db() as s:
        tenant = crud.get_or_create_tenant(s, "acme")
        lost, _ = crud.create_job(s, tenant.id, {}, model_id=None, dataset_id=None,
                                  idempotency_key=None, request_hash="h")
        s.execute(update(Job).where(Job.id == lost.id)
                  .values(enqueued_at=utcnow() - timedelta(hours=2)))
        s.commit()
        [(job_id, _task)] = crud.reap(s, heartbeat_timeout_s=30, requeue_queued_after_s=3600,
                                      max_attempts=3)
    assert job_id == lost.id


def test_progress_writes_are_bounded_and_cancel_raises(db, job):
    c = claim(db, job)
    writer = ProgressWriter(db, job.id, job.task_id, c.attempt, interval_s=60)
    writes = []
    original = crud.write_progress

    def counting(*args, **kwargs):
        writes.append(kwargs["stage"])
        return original(*args, **kwargs)

    crud.write_progress = counting
    try:
        writer("load", 0.0, "load…")
        for i in range(100):
            writer("sensitivity", i / 100, "probing")
        writer("sensitivity", 1.0, "done")
    finally:
        crud.write_progress = original
    assert writes == ["load", "sensitivity", "sensitivity"]  # new stage, new stage, finished
    stored = load(db, job)
    assert stored.stage == "sensitivity" and stored.progress == pytest.approx(0.75)
    with db() as s:
        crud.request_cancel(s, crud.load_job(s, job.id))
    with pytest.raises(JobCancelled):
        writer("solve", 0.0, "solve…")
    with pytest.raises(JobCancelled):  # and on every call after, without a write
        writer("solve", 0.5, "solve…")


def test_a_reaped_worker_stops_at_its_next_progress(db, job):
    c = claim(db, job)
    writer = ProgressWriter(db, job.id, job.task_id, c.attempt, interval_s=0)
    age_heartbeat(db, job, 60)
    with db() as s:
        crud.reap(s, heartbeat_timeout_s=30, requeue_queued_after_s=3600, max_attempts=3)
    with pytest.raises(JobLost):
        writer("load", 0.5, "still here")


def test_overall_progress_is_monotone_over_stages():
    points = [overall_progress(s, f) for s in ("load", "layers", "sensitivity", "solve",
                                               "evaluate", "artifact") for f in (0.0, 0.5, 1.0)]
    assert points == sorted(points) and points[0] == 0.0 and points[-1] == pytest.approx(1.0)
    assert overall_progress("warming up", 0.5) is None


def test_idempotency_key_race_returns_one_job(db):
    with db() as s:
        tenant = crud.get_or_create_tenant(s, "acme")
    jobs = []
    for _ in range(2):
        with db() as s:
            jobs.append(crud.create_job(s, tenant.id, {}, model_id=None, dataset_id=None,
                                        idempotency_key="k", request_hash="h"))
    assert jobs[0][1] and not jobs[1][1] and jobs[0][0].id == jobs[1][0].id
    with db() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1
        with pytest.raises(crud.Conflict):
            crud.create_job(s, tenant.id, {}, model_id=None, dataset_id=None,
                            idempotency_key="k", request_hash="other")


def test_unknown_job_claim_is_missing(db):
    with db() as s:
        assert crud.claim_job(s, uuid.uuid4(), "t", "w", utcnow(), 3).outcome == "missing"
