"""Uploading calibration data through the submit form: the API's reason for a
bad file next to the field, and a job that uses a good one."""

from __future__ import annotations

from dash_helpers import one, open_signed_in, text_of, until
from selenium.webdriver.support.ui import Select


def test_upload_through_the_form(browser, dashboard_server, tmp_path, screenshots):
    server = dashboard_server
    empty, good = tmp_path / "empty.txt", tmp_path / "calib.txt"
    empty.write_text("\n  \n")
    good.write_text("a first calibration sentence\nand a second one\n")
    open_signed_in(browser, server, server.key, "#/submit")
    Select(one(browser, "#model-source")).select_by_value("minilm")
    Select(one(browser, "#dataset-source")).select_by_value("__upload__")
    one(browser, "#dataset-file").send_keys(str(empty))
    one(browser, "#submit-job").click()
    until(browser, lambda: "holds no text" in (text_of(browser, "#error-dataset") or ""))
    screenshots(browser, "submit-upload-refused")

    one(browser, "#dataset-file").send_keys(str(good))
    one(browser, "#dataset-name").send_keys("form-calib")
    one(browser, "#submit-job").click()
    until(browser, lambda: "#/jobs/" in browser.current_url)
    job_id = browser.current_url.rsplit("/", 1)[1]
    with server.client() as api:
        api.post(f"/v1/jobs/{job_id}/cancel")
        job = api.get(f"/v1/jobs/{job_id}").json()
        [dataset] = [d for d in api.get("/v1/datasets").json()["data"] if d["name"] == "form-calib"]
    assert job["spec"]["model"] == "minilm" and job["dataset_id"] == dataset["id"]
    assert dataset["format"] == "text"
