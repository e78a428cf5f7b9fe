"""The shard rows of a job (service.crud, `job_shards`), on SQLite and PostgreSQL: a
claim takes a pending shard once; a silent claimant's shard is claimed again, a live
one's is not; the first result stands; planning again keeps done shards and starts
over one with another payload; a cancelled job's shards are not taken; a failing
shard runs out of attempts. And the settings that decide where shards go."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from svc_helpers import make_settings

from service import crud
from service.config import Settings
from service.db.migrate import upgrade
from service.db.models import Job, utcnow
from service.db.session import dispose_engines, session_scope

SHARDS = [("hutchinson/0/0/0", {"round": 0, "chunk": 0}), ("hutchinson/0/0/1", {"round": 0, "chunk": 1})]


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    url = (make_settings(tmp_path).db_url if request.param == "sqlite"
           else Settings(database_url=request.getfixturevalue("pg_url")).db_url)
    upgrade(url)
    yield url
    dispose_engines()


def _running_job(url: str) -> uuid.UUID:
    with session_scope(url) as session:
        tenant = crud.get_or_create_tenant(session, f"t-{uuid.uuid4().hex[:8]}")
        job, _ = crud.create_job(session, tenant.id, {"model": "digits-cnn"}, model_id=None, dataset_id=None,
                                 idempotency_key=None, request_hash="x")
        job.status = "running"
        session.commit()
        return job.id


def _claim(url, job_id, worker, *, stale_s=60.0, keys=None, max_attempts=3):
    with session_scope(url) as session:
        return crud.claim_shard(session, job_id, worker, utcnow() - timedelta(seconds=stale_s),
                                max_attempts, keys)


def _states(url, job_id, keys=tuple(k for k, _ in SHARDS)):
    with session_scope(url) as session:
        return crud.shard_states(session, job_id, list(keys), with_results=True)


def test_claims_take_each_pending_shard_once_and_the_first_result_stands(db):
    job = _running_job(db)
    with session_scope(db) as session:
        crud.plan_shards(session, job, SHARDS)
    a, b = _claim(db, job, "w/1"), _claim(db, job, "w/2")
    assert {a.key, b.key} == {k for k, _ in SHARDS} and a.payload in [p for _, p in SHARDS]
    assert _claim(db, job, "w/3") is None  # both held, their claimants alive
    with session_scope(db) as session:
        assert crud.shard_heartbeat(session, a.id, a.token)
        assert not crud.shard_heartbeat(session, a.id, "not-the-token")
        assert crud.complete_shard(session, a.id, "w/1", {"samples": [[1.0]]}, 0.5)
        assert not crud.complete_shard(session, a.id, "w/9", {"samples": [[2.0]]}, 0.5)
    state = _states(db, job)[a.key]
    assert (state.status, state.claimed_by, state.attempts) == ("done", "w/1", 1)
    assert state.result == {"samples": [[1.0]]}
    # b's claimant went silent: claimed again (a second attempt); a done shard never is
    again = _claim(db, job, "w/3", stale_s=-1)
    assert again.key == b.key and _states(db, job)[b.key].attempts == 2
    with session_scope(db) as session:
        assert not crud.shard_heartbeat(session, b.id, b.token)  # the old claim is fenced off
    assert _claim(db, job, "w/4", stale_s=-1, keys=[a.key]) is None


def test_planning_again_keeps_done_shards_and_restarts_changed_ones(db):
    job = _running_job(db)
    with session_scope(db) as session:
        crud.plan_shards(session, job, SHARDS)
    claim = _claim(db, job, "w/1", keys=[SHARDS[0][0]])
    with session_scope(db) as session:
        crud.complete_shard(session, claim.id, "w/1", {"samples": []}, 0.1)
        crud.plan_shards(session, job, [SHARDS[0], (SHARDS[1][0], {"round": 0, "chunk": 9})])
    states = _states(db, job)
    assert states[SHARDS[0][0]].status == "done"
    assert states[SHARDS[1][0]].status == "pending"
    with session_scope(db) as session:
        assert crud.peek_shard(session, job, utcnow(), 3) == {"round": 0, "chunk": 9}


def test_a_cancelled_job_has_nothing_to_claim_and_failures_run_out(db):
    job = _running_job(db)
    with session_scope(db) as session:
        crud.plan_shards(session, job, SHARDS[:1])
    for attempt in range(2):
        claim = _claim(db, job, "w/1", max_attempts=2)
        with session_scope(db) as session:
            crud.fail_shard(session, claim.id, claim.token, f"RuntimeError: boom {attempt}")
    state = _states(db, job)[SHARDS[0][0]]
    assert (state.status, state.attempts, state.error) == ("pending", 2, "RuntimeError: boom 1")
    assert _claim(db, job, "w/1", max_attempts=2) is None  # out of attempts
    with session_scope(db) as session:
        crud.plan_shards(session, job, [("hutchinson/1/0/0", {"round": 1})])
        session.get(Job, job).cancel_requested = True
        session.commit()
        assert crud.peek_shard(session, job, utcnow(), 3) is None
    assert _claim(db, job, "w/1") is None


def test_shard_settings(tmp_path):
    s = make_settings(tmp_path, queue="jobs")
    assert s.shard_queue_name == "jobs.shards" and not s.sharding  # auto without Redis: off
    assert make_settings(tmp_path, redis_url="redis://x:6379/0").sharding
    assert not make_settings(tmp_path, redis_url="redis://x:6379/0", shards="off").sharding
    assert make_settings(tmp_path, shards="on", shard_queue="gpu").shard_queue_name == "gpu"
    with pytest.raises(ValueError, match="shard_queue"):
        make_settings(tmp_path, shard_queue="bad queue")


def test_worker_queues_from_the_command_line(tmp_path):
    from service.cli import make_parser
    from service.cli.admin import worker_queues

    s = make_settings(tmp_path, queue="jobs")
    parse = make_parser().parse_args
    assert worker_queues(parse(["worker"]), s) == ["jobs", "jobs.shards"]
    assert worker_queues(parse(["worker", "--shards-only"]), s) == ["jobs.shards"]
    assert worker_queues(parse(["worker", "--queues", "gpu, jobs.shards"]), s) == ["gpu", "jobs.shards"]
    with pytest.raises(SystemExit, match="comma-separated queue names"):
        worker_queues(parse(["worker", "--queues", "a b"]), s)
    with pytest.raises(SystemExit, match="exclude each other"):
        worker_queues(parse(["worker", "--queues", "gpu", "--shards-only"]), s)
