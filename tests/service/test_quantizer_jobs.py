"""The quantizer a job asks for (`quant.algorithm`, `--quantizer`) through the API,
the worker and the CLI: validated at submit, used by the job, recorded in its
result and artifact."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from svc_processes import finished, wait_for

from service.cli import main

JOB = {"model": "digits-cnn", "method": "hawq_v2",
       "method_params": {"max_probes": 10, "min_probes": 4, "tol": 0.2},
       "budgets": {"avg_bits": 3}, "pareto_points": 0}
FAST = ["--method", "hawq_v2", "--param", "tol=0.2", "--param", "min_probes=4", "--param", "max_probes=10"]


def test_an_unknown_quantizer_is_refused_at_submit(client, auth):
    r = client.post("/v1/jobs", json={**JOB, "quant": {"algorithm": "awq"}}, headers=auth)
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "quant", "algorithm"]
    assert "'rtn', 'gptq' or 'adaquant'" in error["msg"]


@pytest.mark.slow
def test_a_gptq_job_runs_through_the_service(sqlite_server):
    api = sqlite_server.client()
    job = api.post("/v1/jobs", json={**JOB, "quant": {"algorithm": "gptq", "act_order": True}}).json()
    done = wait_for(api, job["id"], finished, 300, sqlite_server.tail)
    assert done["status"] == "succeeded", done["error"]
    result = api.get(f"/v1/jobs/{job['id']}/result").json()
    assert result["spec"]["quant"]["algorithm"] == "gptq"
    assert result["sensitivity"]["quantizer"]["settings"]["act_order"] is True
    archive = zipfile.ZipFile(io.BytesIO(api.get(f"/v1/jobs/{job['id']}/artifact").content))
    allocation = json.loads(archive.read("allocation.json"))
    assert allocation["quant"]["algorithm"] == "gptq"


def test_bitalloc_run_with_the_gptq_quantizer(tmp_path, capsys):
    out = tmp_path / "result.json"
    code = main(["run", "--model", "digits-cnn", "--budget", "avg_bits=3", "--quantizer", "gptq",
                 "--damping", "0.05", "--json", str(out), *FAST])
    printed = capsys.readouterr().out
    assert code == 0
    assert "quantizer: gptq" in printed
    result = json.loads(out.read_text())
    assert result["spec"]["quant"]["algorithm"] == "gptq" and result["spec"]["quant"]["damping"] == 0.05


def test_bitalloc_run_refuses_an_unknown_quantizer(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--model", "digits-cnn", "--budget", "avg_bits=3", "--quantizer", "awq"])
    assert exit_.value.code == 2
    assert "invalid choice: 'awq'" in capsys.readouterr().err
