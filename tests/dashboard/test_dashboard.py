"""The dashboard in a real headless Chromium against a real server and worker:
sign in, submit through the form, watch progress move, see the charts, and keep
a screenshot of each page."""

from __future__ import annotations

import json
import random
import time

from dash_helpers import (
    CHEAP_JOB,
    ProgressLog,
    count_fetches,
    css,
    new_tenant_key,
    one,
    open_signed_in,
    set_hidden,
    text_of,
    until,
)


def test_sign_in_refuses_a_bad_key_and_keeps_the_key_in_the_session(browser, dashboard_server,
                                                                      screenshots):
    browser.get(dashboard_server.url + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    one(browser, "#api-key").send_keys("ba_not_a_key")
    one(browser, "#signin-submit").click()
    until(browser, lambda: "not accepted" in text_of(browser, "#signin-error"))
    screenshots(browser, "sign-in")
    key = one(browser, "#api-key")
    key.clear()
    key.send_keys(dashboard_server.key)
    one(browser, "#signin-submit").click()
    one(browser, "#jobs-table")
    assert browser.execute_script("return sessionStorage.getItem('bitalloc.apiKey')") == \
        dashboard_server.key
    assert browser.execute_script("return localStorage.length") == 0
    assert dashboard_server.key not in browser.page_source


def test_submit_form_shows_the_api_validation_next_to_the_field(browser, dashboard_server,
                                                                 screenshots):
    open_signed_in(browser, dashboard_server, dashboard_server.key, "#/submit")
    budget = one(browser, "#budget-avg_bits")
    budget.clear()
    budget.send_keys("0")
    one(browser, "#submit-job").click()
    until(browser, lambda: "must be positive" in text_of(browser, "#error-budgets"))
    model = one(browser, "#model-source")
    browser.execute_script("arguments[0].add(new Option('nosuch', 'nosuch'));"
                           "arguments[0].value = 'nosuch'", model)
    budget.clear()
    budget.send_keys("4")
    one(browser, "#submit-job").click()
    until(browser, lambda: "unknown model 'nosuch'" in text_of(browser, "#error-model"))
    assert one(browser, "#error-budgets").text == ""
    assert [o.get_attribute("value") for o in css(browser, "#quantizer option")] == \
        ["rtn", "gptq", "adaquant"]
    screenshots(browser, "submit-validation")


def test_submit_watch_progress_and_see_the_result(browser, dashboard_server, screenshots,
                                                   tmp_path):
    server = dashboard_server
    open_signed_in(browser, server, server.key, "#/submit")
    # parameters of its own (no cached sensitivities) and a fixed 300 probes per layer (a
    # tolerance no estimate reaches): the same work on any machine, about 15 s of
    # sensitivity on an idle one (a tolerance-stopped job once finished before the list
    # view below saw it running)
    params = {**CHEAP_JOB["method_params"], "max_probes": 300, "min_probes": 300,
              "tol": round(1e-4 + random.random() * 1e-6, 12)}
    method = one(browser, "#method")
    method.clear()
    method.send_keys(CHEAP_JOB["method"])
    box = one(browser, "#method-params")
    box.clear()
    box.send_keys(json.dumps(params))
    screenshots(browser, "submit")
    one(browser, "#submit-job").click()
    until(browser, lambda: "#/jobs/" in browser.current_url)
    job_id = browser.current_url.rsplit("/", 1)[1]
    spec = server.client().get(f"/v1/jobs/{job_id}").json()["spec"]
    assert spec["method"] == CHEAP_JOB["method"] and spec["method_params"] == params
    assert spec["budgets"] == {"avg_bits": 4}
    assert spec["quant"]["algorithm"] == "rtn"  # the form's quantizer, at its default

    # the list shows the job with its progress bar while it runs (first, while the job
    # has surely not finished)
    browser.get(f"{server.url}/#/jobs")
    row = one(browser, f"tr[data-job='{job_id}']")
    assert row.get_attribute("data-status") in ("queued", "running")
    assert css(browser, f"tr[data-job='{job_id}'] [role=progressbar]")
    screenshots(browser, "jobs-running")

    # polling backs off while the tab is hidden and catches up when it returns
    browser.get(f"{server.url}/#/jobs/{job_id}")
    one(browser, "#job-progress")
    progress = ProgressLog(browser)
    visible = count_fetches(browser, 6, progress)
    still_running = server.client().get(f"/v1/jobs/{job_id}").json()["status"] == "running"
    set_hidden(browser, True)
    hidden = count_fetches(browser, 8, progress)
    set_hidden(browser, False)
    assert still_running, "the job finished before the polling check could watch it"
    assert visible >= 4 and hidden <= 2, (visible, hidden)

    deadline = time.monotonic() + 600
    while not css(browser, "#bits-chart") and time.monotonic() < deadline:
        progress()
        time.sleep(0.2)
    seen = progress.seen
    assert css(browser, "#bits-chart"), f"no result after 600 s; progress {seen}\n{server.tail()}"
    moving = [p for p in seen if p not in ("0%", "100%")]
    assert len(set(moving)) >= 2, f"progress did not move: {seen}"
    assert [int(p[:-1]) for p in seen] == sorted(int(p[:-1]) for p in seen), seen

    result = server.client().get(f"/v1/jobs/{job_id}/result").json()
    layers = result["layers"]
    bars = css(browser, "#bits-chart rect.bar-layer")
    assert [b.get_attribute("data-layer") for b in bars] == [layer["name"] for layer in layers]
    assert [int(b.get_attribute("data-bits")) for b in bars] == [layer["w_bits"] for layer in layers]
    assert len({b.get_attribute("fill") for b in bars}) == len({layer["w_bits"] for layer in layers})
    assert len(css(browser, "#sensitivity-chart .sens-layer")) == len(layers)
    assert len(css(browser, "#sensitivity-chart circle.sens-point")) == \
        sum(1 for layer in layers if layer["stats"]["trace"] > 0)
    assert len(css(browser, "#sensitivity-chart .sens-err")) == \
        sum(1 for layer in layers if layer["stats"]["trace_se"] > 0 and layer["stats"]["trace"] > 0)
    assert len(css(browser, "#pareto-chart .pareto-chosen")) == 1
    assert len(css(browser, "#pareto-chart .pareto-uniform")) >= 3
    assert len(css(browser, "#pareto-chart .pareto-point")) == len(result["pareto"])
    assert len(css(browser, "#quality-chart .pareto-uniform")) == \
        sum(1 for u in result["uniform_points"] if u["w_bits"] < 16)
    assert len(css(browser, "#quality-chart .pareto-chosen")) == 1
    assert len(css(browser, "#layer-table tbody tr")) == len(layers)
    assert f"{result['summary']['avg_bits']:.3f}" in one(browser, "#summary").text
    assert "Uniform 4-bit is" in text_of(browser, "#quality")
    assert one(browser, ".badge").text == "succeeded"
    screenshots(browser, "job")

    browser.execute_cdp_cmd("Page.setDownloadBehavior",
                            {"behavior": "allow", "downloadPath": str(tmp_path)})
    one(browser, "#download-result").click()
    one(browser, "#download-artifact").click()
    until(browser, lambda: {p.name for p in tmp_path.iterdir()} >= {f"bitalloc-{job_id}.json"}
          and any(p.name.startswith(f"bitalloc-{job_id}.") and p.suffix not in (".json", ".crdownload")
                  for p in tmp_path.iterdir()), 30)
    assert json.loads((tmp_path / f"bitalloc-{job_id}.json").read_text())["layers"] == layers

    browser.get(f"{server.url}/#/jobs?status=succeeded")
    row = one(browser, f"tr[data-job='{job_id}']")
    assert row.get_attribute("data-status") == "succeeded"
    screenshots(browser, "jobs")


def test_another_tenant_sees_none_of_the_jobs(browser, dashboard_server):
    server = dashboard_server
    theirs = server.client().post("/v1/jobs", json={**CHEAP_JOB, "budgets": {"avg_bits": 8}}).json()
    other = new_tenant_key(server, "someone-else")
    open_signed_in(browser, server, other, "#/jobs")
    until(browser, lambda: text_of(browser, "#jobs-count") == "(0)")
    assert not css(browser, "tr[data-job]")
    browser.get(f"{server.url}/#/jobs/{theirs['id']}")
    until(browser, lambda: "No job" in (text_of(browser, "#job-head") or ""))
    server.client().post(f"/v1/jobs/{theirs['id']}/cancel")
