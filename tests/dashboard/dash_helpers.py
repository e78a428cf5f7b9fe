"""Small helpers for driving the dashboard in the browser tests."""

from __future__ import annotations

import json
import subprocess
import time

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from svc_processes import BITALLOC

CHEAP_JOB = {"model": "digits-cnn", "method": "hawq_v2",
             "method_params": {"max_probes": 10, "min_probes": 4, "tol": 0.2},
             "budgets": {"avg_bits": 4}}


def css(driver, selector: str):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def one(driver, selector: str, timeout_s: float = 20):
    """The first element matching `selector`, waiting for it to appear."""
    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(
        lambda d: (css(d, selector) or [None])[0])


def until(driver, predicate, timeout_s: float = 20):
    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(lambda d: predicate())


def open_signed_in(driver, server, key: str, hash_: str = "#/jobs") -> None:
    driver.get(server.url + "/")
    driver.execute_script("sessionStorage.setItem('bitalloc.apiKey', arguments[0])", key)
    driver.get(f"{server.url}/{hash_}")
    driver.refresh()


def new_tenant_key(server, tenant: str) -> str:
    out = subprocess.run([*BITALLOC, "keys", "create", "--tenant", tenant, "--json"],
                         env=server.env, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)["key"]


def count_fetches(driver, seconds: float, on_tick=lambda: None) -> int:
    """Requests the page makes in the next `seconds` (fetch is wrapped once);
    `on_tick` is called every 0.2 s meanwhile."""
    driver.execute_script("""
        if (!window.__wrapped) {
          window.__wrapped = true; window.__fetches = 0;
          const f = window.fetch; window.fetch = (...a) => { window.__fetches += 1; return f(...a); };
        }
        window.__fetches = 0;""")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        on_tick()
        time.sleep(0.2)
    return driver.execute_script("return window.__fetches")


def set_hidden(driver, hidden: bool) -> None:
    driver.execute_script("""
        Object.defineProperty(document, 'hidden', {configurable: true, get: () => arguments[0]});
        document.dispatchEvent(new Event('visibilitychange'));""", hidden)


class ProgressLog:
    """The job page's progress readings, each change once."""

    def __init__(self, driver):
        self.driver, self.seen = driver, []

    def __call__(self) -> None:
        text = text_of(self.driver, "#job-progress")
        if text is not None and (not self.seen or self.seen[-1] != text):
            self.seen.append(text)


def text_of(driver, selector: str) -> str | None:
    """The text of the first match, read in the page (views re-render as they poll)."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null", selector)
