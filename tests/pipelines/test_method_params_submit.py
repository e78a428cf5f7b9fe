"""`bitalloc submit` with a bad method parameter: the API refuses it at submit time
and the command exits with the bad-request status (2) and the reason."""

from __future__ import annotations

import subprocess
import sys


def test_submit_with_a_bad_method_parameter_exits_2_with_the_reason(pipeline_env):
    out = subprocess.run([sys.executable, "-m", "service.cli", "submit", "--model", "digits-cnn",
                          "--budget", "avg_bits=4", "--method", "hawq_v2", "--param", "max_probes=1"],
                         env=pipeline_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == \
        "error: method_params: hawq_v2: max_probes must be an integer >= 2, got 1", out.stderr
