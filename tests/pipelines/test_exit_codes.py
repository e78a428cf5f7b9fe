"""`bitalloc submit / status / result / artifact`: distinct exit statuses for a
failed job (1), a bad request (2), an unreachable server (3) and a timeout (4)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHEAP = ["--model", "digits-cnn", "--budget", "avg_bits=4", "--param", "max_probes=10",
         "--param", "min_probes=4", "--param", "tol=0.2"]
NO_JOB = "00000000-0000-0000-0000-000000000000"


def bitalloc(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args", [["status", NO_JOB], ["result", NO_JOB],
                                  ["artifact", NO_JOB, "-o", "out"], ["submit", *CHEAP]])
def test_an_unreachable_server_exits_3(pipeline_env, tmp_path, args):
    out = bitalloc({**pipeline_env, "BITALLOC_URL": "http://127.0.0.1:9"}, *args)
    assert out.returncode == 3, out.stderr
    assert out.stderr.startswith("error: cannot reach http://127.0.0.1:9")


def test_bad_requests_exit_2_with_the_reason(pipeline_env):
    out = bitalloc(pipeline_env, "submit", "--model", "resnet9000", "--budget", "avg_bits=4")
    assert out.returncode == 2 and "unknown model 'resnet9000'" in out.stderr
    out = bitalloc(pipeline_env, "submit", "--model", "digits-cnn", "--budget", "avg_bits=0")
    assert out.returncode == 2 and out.stderr.strip() == \
        "error: budgets: budget avg_bits must be positive, got 0.0"
    out = bitalloc(pipeline_env, "submit", "--model", "digits-cnn", "--budget", "avg_bits=four")
    assert out.returncode == 2 and "needs a number" in out.stderr
    out = bitalloc(pipeline_env, "status", NO_JOB)
    assert out.returncode == 2 and f"job {NO_JOB} not found" in out.stderr
    out = bitalloc({**pipeline_env, "BITALLOC_API_KEY": "ba_wrong"}, "status", NO_JOB)
    assert out.returncode == 2 and "invalid or revoked API key" in out.stderr


def test_a_timeout_exits_4_and_a_cancelled_job_exits_1(pipeline_env, pipeline_server):
    out = bitalloc(pipeline_env, "submit", *CHEAP, "--budget", "avg_bits=3", "--wait", "--timeout", "1",
                   "--idempotency-key", "slow-one")
    assert out.returncode == 4 and "after 1 s" in out.stderr, out.stderr
    with pipeline_server.client() as api:
        running = api.post("/v1/jobs", json={"model": "digits-cnn", "budgets": {"avg_bits": 3},
                                             "method_params": {"max_probes": 10, "min_probes": 4,
                                                               "tol": 0.2}},
                           headers={"Idempotency-Key": "slow-one"}).json()
        queued = api.post("/v1/jobs", json={"model": "digits-cnn", "budgets": {"avg_bits": 5}},
                          headers={"Idempotency-Key": "never-runs"}).json()
        assert api.post(f"/v1/jobs/{queued['id']}/cancel").json()["status"] == "cancelled"
        api.post(f"/v1/jobs/{running['id']}/cancel")
    out = bitalloc(pipeline_env, "submit", "--model", "digits-cnn", "--budget", "avg_bits=5",
                   "--idempotency-key", "never-runs", "--wait", "--json")
    assert out.returncode == 1 and json.loads(out.stdout)["job"]["status"] == "cancelled"
    out = bitalloc(pipeline_env, "status", queued["id"])
    assert out.returncode == 1 and out.stdout.startswith("cancelled")
    out = bitalloc(pipeline_env, "result", queued["id"])
    assert out.returncode == 2 and "job was cancelled" in out.stderr
