"""An unknown method or a bad method parameter is refused when the job is submitted
(422 with the reason, `bitalloc run` exits with the usage-error code), not later
in the worker; good parameters go through untouched."""

from __future__ import annotations

import pytest

from service.cli import main

USAGE_ERROR = 2  # bitalloc's exit status for a bad request

JOB = {"model": "digits-cnn", "method": "hawq_v2",
       "method_params": {"max_probes": 10, "min_probes": 4, "tol": 0.2},
       "budgets": {"avg_bits": 4}}
METHODS = "empirical, fisher, hawq_v1, hawq_v2, interlayer, lrp"

BAD = [
    ("unknown method", {"method": "magic"}, "method", f"unknown method 'magic'; methods: {METHODS}"),
    ("unknown parameter", {"method_params": {"bogus": 1}}, "method_params",
     "hawq_v2: unknown parameter(s) bogus; accepted: mode, tol, min_probes, max_probes, seed, engine, "
     "block, backend"),
    ("bad value", {"method_params": {"tol": 2}}, "method_params", "hawq_v2: tol must be in (0, 1), got 2"),
    ("wrong type", {"method_params": {"max_probes": "ten"}}, "method_params",
     "hawq_v2: max_probes must be an integer >= 2, got 'ten'"),
    ("engine of another method", {"method": "fisher", "method_params": {"engine": "hvp"}}, "method_params",
     "fisher: engine must be one of auto, gn, gn_joint; got 'hvp'"),
    ("trace settings with measured pairs",
     {"method": "interlayer", "method_params": {"pairs": "measured", "tol": 0.2}}, "method_params",
     "interlayer: with pairs='measured' every term is measured, so tol do not apply"),
]


@pytest.mark.parametrize("case, change, field, reason", BAD, ids=[c[0] for c in BAD])
def test_bad_method_or_params_answer_422_with_the_reason(client, auth, settings, case, change, field,
                                                         reason):
    r = client.post("/v1/jobs", json={**JOB, **change}, headers=auth)
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", field]
    assert reason in error["msg"], error["msg"]
    assert client.get("/v1/jobs", headers=auth).json()["count"] == 0
    assert not list((settings.data_path / "broker" / "queue").glob("*.msg"))


def test_good_params_are_stored_as_given(client, auth):
    params = {"method": "interlayer", "method_params": {"window": 1, "tol": 0.2, "max_probes": 10}}
    r = client.post("/v1/jobs", json={**JOB, **params}, headers=auth)
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["method_params"] == params["method_params"]  # no defaults filled in


@pytest.mark.parametrize("args, reason", [
    (["--method", "magic"], f"error: method: unknown method 'magic'; methods: {METHODS}"),
    (["--param", "tol=2"], "error: method_params: fisher: tol must be in (0, 1), got 2"),
    (["--method", "lrp", "--param", "rule=captum"],
     "error: method_params: lrp: unknown parameter(s) rule; accepted: rules, eps, attention"),
])
def test_bitalloc_run_refuses_bad_params_before_loading_anything(capsys, args, reason):
    code = main(["run", "--model", "digits-cnn", "--budget", "avg_bits=4", *args])
    err = capsys.readouterr().err.strip()
    assert code == USAGE_ERROR
    assert err == reason
