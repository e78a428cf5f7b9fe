"""bench/kernels.py stays runnable: without CUDA it runs its CPU sanity check."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "kernels.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU benchmark takes minutes")
def test_bench_runs_its_cpu_sanity_check(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_kernels", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "kernels.json"
    assert bench.main(["--out", str(out)]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["device"] == "cpu"
    assert {c["bits"] for c in result["cases"]} == {2, 3, 4, 8, "w8a8"}
    assert all(c["max_rel_error"] <= 1e-5 for c in result["cases"] if c["bits"] == "w8a8")
