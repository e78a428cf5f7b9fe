"""The examples in docs/pipelines.md, run as written against a live server."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from doc_blocks import code_blocks

# A progress line of some pipeline stage: polling sees some stages, never all for sure.
STAGE_LINE = re.compile(r"^(load|layers|sensitivity|solve|evaluate|artifact): ", re.M)


def test_the_doc_has_one_shell_and_one_python_example():
    assert len(code_blocks("sh")) == 1 and len(code_blocks("python")) == 1


def test_shell_ci_example(pipeline_env, tmp_path):
    [script] = code_blocks("sh")
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=pipeline_env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    done = json.loads((tmp_path / "done.json").read_text())
    assert done["job"]["status"] == "succeeded"
    assert done["job"]["idempotency_key"] == "ci-4711-digits"
    assert json.loads((tmp_path / "result.json").read_text()) == done["result"]
    [artifact] = (tmp_path / "artifacts").iterdir()
    assert artifact.name.startswith(f"bitalloc-{done['job']['id']}") and artifact.stat().st_size > 0
    # progress on stderr as plain lines (not a terminal), the status line, the quality line
    assert STAGE_LINE.search(out.stderr) and "\r" not in out.stderr
    assert out.stdout.startswith("succeeded ") and "bits/weight, accuracy drop" in out.stdout


def test_python_example(pipeline_env, tmp_path):
    [script] = code_blocks("python")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=pipeline_env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "refused: Value error, budget avg_bits must be positive, got 0.0"
    assert STAGE_LINE.search(out.stdout) and any(line.endswith("-bit") for line in lines)
    [artifact] = (tmp_path / "artifacts").iterdir()
    assert lines[-1] == f"packed model: artifacts/{artifact.name}"
