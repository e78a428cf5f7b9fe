"""Activation bits in the dashboard (issue #17): the submit form's activation widths and
settings, the API's refusals next to them, and the job page's a-bits column and its table
against uniform W8A8, W4A8, ..."""

from __future__ import annotations

import json
import time

import pytest
from dash_helpers import css, one, open_signed_in, text_of, until

FAST = {"tol": 0.25, "min_probes": 4, "max_probes": 12}  # tests/workers/test_activation_pipeline.py

RECORD_SUBMITS = """
    if (!window.__bodies) {
      window.__bodies = [];
      const f = window.fetch;
      window.fetch = (path, opts = {}) => {
        if (path === '/v1/jobs' && opts.method === 'POST') window.__bodies.push(JSON.parse(opts.body));
        return f(path, opts);
      };
    }"""


def _fill(browser, selector: str, value: str) -> None:
    box = one(browser, selector)
    box.clear()
    if value:
        box.send_keys(value)


def _check(browser, selector: str, on: bool) -> None:
    box = one(browser, selector)
    if box.is_selected() != on:
        box.click()


def _select(browser, selector: str, value: str) -> None:
    browser.execute_script("arguments[0].value = arguments[1]", one(browser, selector), value)


def _digits_macs() -> float:
    from sensitivity.layers import discover_layers
    from sensitivity.models import load_model

    return sum(layer.macs for layer in discover_layers(load_model("digits-cnn")) if layer.used)


def test_activation_fields_send_nothing_at_16_and_show_the_api_refusals(browser, dashboard_server,
                                                                         screenshots):
    open_signed_in(browser, dashboard_server, dashboard_server.key, "#/submit")
    assert [b.get_attribute("value") for b in css(browser, "#activation-bits input")] == \
        ["4", "6", "8", "16"]
    assert [b.is_selected() for b in css(browser, "#activation-bits input")] == \
        [False, False, False, True]
    browser.execute_script(RECORD_SUBMITS)

    # only 16 checked: no activation fields in the request (a bad budget stops the job)
    _fill(browser, "#budget-avg_bits", "0")
    one(browser, "#submit-job").click()
    until(browser, lambda: "must be positive" in text_of(browser, "#error-budgets"))
    sent = browser.execute_script("return window.__bodies")
    assert len(sent) == 1 and "activation_bits" not in sent[0] and "activation" not in sent[0]["quant"]

    # dynamic ranges with a clipping range: refused, next to the activation settings
    _fill(browser, "#budget-avg_bits", "4")
    _check(browser, "#act-bits-8", True)
    _select(browser, "#act-mode", "dynamic")
    _select(browser, "#act-range", "percentile")
    one(browser, "#submit-job").click()
    until(browser, lambda: "needs mode 'static'" in text_of(browser, "#error-quant\\.activation"))
    sent = browser.execute_script("return window.__bodies")
    assert sent[-1]["activation_bits"] == [8, 16]
    assert sent[-1]["quant"]["activation"] == {"mode": "dynamic", "range": "percentile",
                                               "symmetric": False}
    assert text_of(browser, "#error-budgets") == ""

    # a method that does not estimate activation sensitivity: refused at the widths
    _select(browser, "#act-mode", "static")
    _select(browser, "#act-range", "minmax")
    _fill(browser, "#method", "lrp")
    one(browser, "#submit-job").click()
    until(browser, lambda: "does not estimate activation sensitivity"
          in text_of(browser, "#error-activation_bits"))
    assert text_of(browser, "#error-quant\\.activation") == ""
    assert "invalid" in one(browser, "[data-field='activation_bits']").get_attribute("class")
    screenshots(browser, "submit-activation-validation")


def test_submit_with_activation_widths_and_see_the_uniform_activation_points(
        browser, dashboard_server, screenshots):
    server = dashboard_server
    open_signed_in(browser, server, server.key, "#/submit")
    # half the BOPs of uniform W8A8: some inputs at 8 bits, or weights at 2 bits
    bops = round(_digits_macs() * 8 * 8 * 0.5)
    _fill(browser, "#method", "fisher")
    _fill(browser, "#method-params", json.dumps(FAST))
    _fill(browser, "#budget-avg_bits", "")
    _fill(browser, "#budget-bops", str(bops))
    _check(browser, "#act-bits-8", True)
    _check(browser, "#act-symmetric", True)
    one(browser, "#submit-job").click()
    until(browser, lambda: "#/jobs/" in browser.current_url)
    job_id = browser.current_url.rsplit("/", 1)[1]
    spec = server.client().get(f"/v1/jobs/{job_id}").json()["spec"]
    assert spec["activation_bits"] == [8, 16] and spec["budgets"] == {"bops": bops}
    assert spec["quant"]["activation"]["symmetric"] is True

    deadline = time.monotonic() + 600
    while not css(browser, "#layer-table") and time.monotonic() < deadline:
        status = server.client().get(f"/v1/jobs/{job_id}").json()
        if status["status"] in ("failed", "cancelled"):
            pytest.fail(f"job {status['status']}: {status.get('error')}\n{server.tail()}")
        time.sleep(0.5)
    assert css(browser, "#layer-table"), f"no result after 600 s\n{server.tail()}"

    result = server.client().get(f"/v1/jobs/{job_id}/result").json()
    a_bits = [layer["a_bits"] for layer in result["layers"]]
    assert 8 in a_bits  # the budget forces some inputs to 8 bits
    heads = [th.get_attribute("textContent") for th in css(browser, "#layer-table thead th")]
    assert "a bits" in heads
    cells = css(browser, "#layer-table tbody td[data-a-bits]")
    assert [int(c.get_attribute("textContent")) for c in cells] == a_bits

    points = result["uniform_activation_points"]
    assert {(p["w_bits"], p["a_bits"]) for p in points} >= {(8, 8), (4, 8)}
    table = one(browser, "#activation-table")
    assert "Against uniform (weight, activation) widths" in text_of(browser, "#job-details")
    rows = css(browser, "#activation-table tbody tr")
    assert [r.get_attribute("data-point") for r in rows] == \
        ["allocation", *(f"W{p['w_bits']}A{p['a_bits']}" for p in points)]
    q = result["quality"]
    metric = q["metric"]
    w8a8 = next(p for p in points if (p["w_bits"], p["a_bits"]) == (8, 8))
    cells = [c.get_attribute("textContent")
             for c in css(browser, "#activation-table tr[data-point='W8A8'] td")]
    assert cells[0] == "W8A8"
    assert float(cells[1]) == pytest.approx(w8a8["cost"], rel=1e-2)  # BOPs, 3 digits shown
    assert float(cells[3]) == pytest.approx(w8a8["quality"][metric], rel=1e-3, abs=1e-4)
    sign = -1 if q["directions"].get(metric) == "lower" else 1
    expected_drop = sign * (q["full_precision"][metric] - w8a8["quality"][metric])
    assert float(cells[4]) == pytest.approx(expected_drop, rel=1e-2, abs=1e-3)
    alloc = [c.get_attribute("textContent")
             for c in css(browser, "#activation-table tr[data-point='allocation'] td")]
    assert float(alloc[1]) == pytest.approx(result["summary"]["bops"], rel=1e-2)
    assert float(alloc[1]) <= bops * 1.01 and "BOPs" in table.get_attribute("textContent")
    screenshots(browser, "job-activations")
