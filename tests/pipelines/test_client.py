"""service.client against a live server: typed errors, wait with a timeout,
and the progress printer's two faces (a bar on a terminal, lines otherwise)."""

from __future__ import annotations

import io
import random

import pytest

from service.cli.progress import ProgressPrinter
from service.client import BadRequest, Client, ClientError, NotFound, Unauthorized, Unreachable, WaitTimeout

NO_JOB = "00000000-0000-0000-0000-000000000000"


def test_errors_are_typed(pipeline_server):
    client = Client(pipeline_server.url, pipeline_server.key)
    with pytest.raises(NotFound) as found:
        client.job(NO_JOB)
    assert found.value.status == 404
    with pytest.raises(BadRequest) as bad:
        client.submit({"model": "digits-cnn", "budgets": {"avg_bits": 4}, "bogus": 1})
    assert bad.value.status == 422 and bad.value.detail[0]["loc"] == ["body", "bogus"]
    with pytest.raises(Unauthorized):
        Client(pipeline_server.url, "ba_wrong").job(NO_JOB)
    with pytest.raises(Unreachable) as gone:
        Client("http://127.0.0.1:9", "ba_x", timeout_s=2).job(NO_JOB)
    assert isinstance(gone.value, ClientError) and gone.value.status == 0


def test_environment_gives_the_server_and_key(pipeline_server, monkeypatch):
    monkeypatch.setenv("BITALLOC_URL", pipeline_server.url + "/")
    monkeypatch.setenv("BITALLOC_API_KEY", pipeline_server.key)
    client = Client()
    assert client.url == pipeline_server.url and client.jobs(limit=1) is not None


def test_wait_times_out_with_the_job(pipeline_server):
    client = Client(pipeline_server.url, pipeline_server.key)
    # parameters of its own, so no table cached by an earlier job makes it finish at once
    job = client.submit({"model": "digits-cnn", "budgets": {"avg_bits": 6}, "method": "hawq_v2",
                         "method_params": {"min_probes": 30, "max_probes": 30,
                                           "tol": round(0.05 + random.random() * 1e-4, 9)}})
    seen = []
    try:
        with pytest.raises(WaitTimeout) as late:
            client.wait(job["id"], timeout_s=1.0, poll_s=0.2, on_update=seen.append)
        assert late.value.job["id"] == job["id"] and isinstance(late.value, TimeoutError)
        assert 2 <= len(seen) <= 6
    finally:
        try:
            client.cancel(job["id"])
        except BadRequest as exc:  # it finished in the meantime: nothing left to cancel
            assert "already" in str(exc), exc


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty, log = Tty(), io.StringIO()
    for stream in (tty, log):
        bar = ProgressPrinter(stream, min_interval_s=0)
        bar("sensitivity", 0.5, "probe 5")
        bar("sensitivity", 1.0, "done")
    assert "\r" in tty.getvalue() and "[##########..........]" in tty.getvalue()
    assert log.getvalue() == "sensitivity: probe 5\nsensitivity: done\n"
