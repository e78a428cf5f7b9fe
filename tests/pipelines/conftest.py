"""The live server (shared with the dashboard tests) and the environment a CI
job would have."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import live_server  # noqa: E402


@pytest.fixture(scope="session")
def pipeline_server(tmp_path_factory):
    yield live_server.start(tmp_path_factory)
    live_server.stop()


@pytest.fixture
def pipeline_env(pipeline_server):
    """The server, its key, bitalloc on PATH; no other BITALLOC_ settings."""
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITALLOC_")}
    return {**env, "BITALLOC_URL": pipeline_server.url, "BITALLOC_API_KEY": pipeline_server.key,
            "PATH": f"{venv_bin}:{env.get('PATH', '/usr/bin:/bin')}", "CI_PIPELINE_ID": "4711"}
