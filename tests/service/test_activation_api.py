"""Activation widths at the API's edge: bad widths and settings are refused with a 422 and
the reason, before anything is queued; the manifest lists the widths."""

import pytest

JOB = {"model": "digits-cnn", "method": "fisher", "budgets": {"bops": 1e7}}


@pytest.mark.parametrize("extra, reason", [
    ({"activation_bits": [5]}, "activation bits must be one of [4, 6, 8, 16]"),
    ({"activation_bits": [8], "method": "lrp"}, "does not estimate activation sensitivity"),
    ({"activation_bits": [8], "export": "gptq"}, "need export 'bitalloc'"),
    ({"quant": {"activation": {"mode": "dynamic", "range": "mse"}}}, "needs mode 'static'"),
    ({"overrides": {"activation_bits": {"fc1": [2]}}}, "activation bits must be one of"),
])
def test_bad_activation_settings_are_refused_at_the_edge(client, auth, extra, reason):
    r = client.post("/v1/jobs", json={**JOB, **extra}, headers=auth)
    assert r.status_code == 422 and reason in r.text
    assert client.get("/v1/jobs", headers=auth).json()["count"] == 0


def test_manifest_lists_activation_widths(client, auth):
    m = client.get("/v1/manifest", headers=auth).json()
    assert m["activation_bits"] == [4, 6, 8, 16]
    assert m["activation_ranges"] == ["minmax", "percentile", "mse"]
    stores = {f["name"]: f["activation_quantization"] for f in m["exports"]}
    assert stores["bitalloc"] and stores["compressed-tensors"] and not stores["gptq"]
