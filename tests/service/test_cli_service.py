"""`bitalloc keys` and the client commands (`submit --wait`, `status`, `result`)."""

from __future__ import annotations

import json
import subprocess

import pytest
from svc_processes import BITALLOC

from service.cli import main
from service.config import get_settings


@pytest.fixture
def data_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BITALLOC_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    yield
    get_settings.cache_clear()


def test_keys_create_list_revoke(data_env, capsys):
    assert main(["keys", "create", "--tenant", "acme", "--label", "ci", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["key"].startswith("ba_") and created["tenant"] == "acme"
    assert main(["keys", "list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["prefix"] == created["prefix"] and created["key"] not in json.dumps(listed)
    assert main(["keys", "revoke", created["prefix"]]) == 0
    assert "revoked 1 key" in capsys.readouterr().out
    assert main(["keys", "revoke", created["prefix"]]) == 1


def test_client_commands_report_refusals(data_env, capsys):
    code = main(["status", "00000000-0000-0000-0000-000000000000", "--url",
                 "http://127.0.0.1:9", "--key", "ba_x"])
    assert code == 3 and "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


@pytest.mark.slow
def test_submit_wait_status_result_against_a_server(sqlite_server, tmp_path):
    server = sqlite_server
    common = ["--url", server.url, "--key", server.key]
    out = subprocess.run([*BITALLOC, "submit", "--model", "digits-cnn", "--budget", "avg_bits=4",
                          "--param", "max_probes=10", "--param", "min_probes=4", "--param",
                          "tol=0.2", "--wait", "--json", *common],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    done = json.loads(out.stdout)
    assert done["job"]["status"] == "succeeded" and done["result"]["summary"]["avg_bits"] <= 4
    job_id = done["job"]["id"]
    out = subprocess.run([*BITALLOC, "status", job_id, *common], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("succeeded")
    target = tmp_path / "result.json"
    out = subprocess.run([*BITALLOC, "result", job_id, "--output", str(target), *common],
                         capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(target.read_text())["spec"]["model"] == "digits-cnn"
    out = subprocess.run([*BITALLOC, "submit", "--model", "resnet9000", "--budget", "avg_bits=4",
                          *common], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown model 'resnet9000'" in out.stderr
