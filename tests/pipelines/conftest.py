"""A real `bitalloc serve` (SQLite, embedded worker) for the pipeline tests,
and the code blocks of docs/pipelines.md."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "service"))
from svc_processes import FAST_REAPING, serve  # noqa: E402

DOC = Path(__file__).parents[2] / "docs" / "pipelines.md"


def code_blocks(language: str) -> list[str]:
    """The fenced blocks of docs/pipelines.md in `language`, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", DOC.read_text(), flags=re.S | re.M)


@pytest.fixture(scope="session")
def pipeline_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-pipelines")
    env = {"BITALLOC_DATA": str(tmp / "data"), "DATABASE_URL": "", "REDIS_URL": "", **FAST_REAPING}
    with serve(tmp, env) as server:
        yield server


@pytest.fixture
def pipeline_env(pipeline_server):
    """The environment a CI job would have: the server, its key, bitalloc on PATH."""
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITALLOC_")}
    return {**env, "BITALLOC_URL": pipeline_server.url, "BITALLOC_API_KEY": pipeline_server.key,
            "PATH": f"{venv_bin}:{env.get('PATH', '/usr/bin:/bin')}", "CI_PIPELINE_ID": "4711"}
