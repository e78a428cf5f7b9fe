"""A real `bitalloc serve` (SQLite, embedded worker; shared with the pipeline
tests, see tests/pipelines/live_server.py) and a headless Debian
Chromium driven by Selenium through the system chromedriver. Without Chromium
the tests skip, except under CI=true, where they fail."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "pipelines"))
import live_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DOCS_SCREENSHOTS = Path(__file__).parents[2] / "docs" / "screenshots"
_taken: list[Path] = []


def pytest_terminal_summary(terminalreporter):
    if _taken:
        terminalreporter.write_line(f"dashboard screenshots ({len(_taken)}): {_taken[0].parent}")


@pytest.fixture(scope="session")
def dashboard_server(tmp_path_factory):
    yield live_server.start(tmp_path_factory)
    live_server.stop()


@pytest.fixture(scope="session")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        missing.append(f"selenium ({exc})")
    if missing:
        message = f"browser tests need {', '.join(missing)} (make test installs them)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run the browser tests")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory):
    """Saves a full-page screenshot with the test output (pytest's temporary
    folder, printed at the end) and, with BITALLOC_UPDATE_SCREENSHOTS=1, in
    docs/screenshots/ as well."""
    out = tmp_path_factory.mktemp("screenshots")
    update_docs = os.environ.get("BITALLOC_UPDATE_SCREENSHOTS") == "1"

    def take(driver, name: str) -> Path:
        height = driver.execute_script("window.scrollTo(0, 0); "
                                       "return document.documentElement.scrollHeight")
        driver.set_window_size(1280, max(900, min(int(height) + 160, 6000)))
        path = out / f"{name}.png"
        driver.save_screenshot(str(path))
        _taken.append(path)
        driver.set_window_size(1280, 900)
        if update_docs:
            DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, DOCS_SCREENSHOTS / path.name)
        return path

    return take
