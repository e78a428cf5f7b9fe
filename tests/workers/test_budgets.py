"""Every budget kind through the pipeline: several at once, latency tables, the
quality-drop search, and the Pareto frontier returned with the result."""

import json

import pytest

from service.cli import main
from workers.pipeline import run_job
from workers.spec import JobSpec

FAST = {"tol": 0.25, "min_probes": 4, "max_probes": 12}
LAYERS = ["stem.0", "block.conv_a", "block.conv_b", "block.downsample.0", "conv.0", "fc1", "fc2"]


def spec(**kw) -> JobSpec:
    base = {"model": "digits-cnn", "method": "hawq_v2", "method_params": FAST}
    return JobSpec.model_validate({**base, **kw})


def test_several_budgets_at_once_and_the_frontier(digits_bundle):
    result = run_job(spec(budgets={"avg_bits": 5, "bops": 3.0e7}, pareto_points=8))
    use = result.solver.budget_use
    assert use["avg_bits"][0] <= 5 + 1e-9 and use["bops"][0] <= 3.0e7
    assert result.summary.bops == pytest.approx(use["bops"][0])
    assert result.frontier_kind == "avg_bits"
    costs = [p.cost for p in result.pareto]
    objectives = [p.objective for p in result.pareto]
    assert costs == sorted(costs) and all(a >= b - 1e-12 for a, b in zip(objectives, objectives[1:]))
    chosen = [p for p in result.pareto if p.chosen]
    assert len(chosen) == 1 and chosen[0].objective == pytest.approx(result.solver.objective, rel=1e-6)
    widths = [u.w_bits for u in result.uniform_points]
    assert widths == [2, 3, 4, 5, 6, 8, 16]
    acc = [u.quality["accuracy"] for u in result.uniform_points]
    assert acc[0] < acc[-1]  # 2-bit uniform is measurably worse than 16-bit


def test_latency_budget_reads_the_table(digits_bundle):
    # a given table: each layer's time grows with its width
    table = {
        name: {f"w{b}a16": 0.01 * (i + 1) * b for b in (2, 3, 4, 5, 6, 8, 16)}
        for i, name in enumerate(LAYERS)
    }
    result = run_job(spec(budgets={"latency_ms": 1.0}, latency_table=table, fixed_latency_ms=0.1))
    used = 0.1 + sum(table[layer.name][f"w{layer.w_bits}a16"] for layer in result.layers)
    assert result.solver.budget_use["latency_ms"][0] == pytest.approx(used)
    assert used <= 1.0 + 1e-9


def test_latency_budget_without_a_table_is_refused():
    with pytest.raises(ValueError, match="latency_ms budget needs latency_table"):
        spec(budgets={"latency_ms": 1.0})


def test_max_quality_drop_bisects_on_measured_quality(digits_bundle):
    result = run_job(spec(budgets={"max_quality_drop": 1.0}, quality_evals=6, pareto_points=0))
    search = result.quality_search
    assert search is not None and search.max_drop == 1.0 and search.min_drop == 0.5
    assert 1 <= len(search.trials) <= 6
    drop = result.quality.full_precision["accuracy"] - result.quality.allocation["accuracy"]
    assert drop <= 1.0 + 1e-9
    assert any(t.drop == pytest.approx(drop) for t in search.trials)  # the chosen trial was measured
    if search.reached:
        assert drop >= 0.5 - 1e-9


def test_cli_latency_command_and_pareto_flag(tmp_path, capsys, digits_bundle):
    out = tmp_path / "latency.json"
    assert main(["latency", "--model", "digits-cnn", "--bits", "4,8,16", "-o", str(out)]) == 0
    table = json.loads(out.read_text())
    assert set(table) == set(LAYERS)
    assert all(set(row) == {"w4a16", "w8a16", "w16a16"} and min(row.values()) > 0 for row in table.values())
    code = main(
        [
            "run",
            "--model",
            "digits-cnn",
            "--budget",
            "avg_bits=4",
            "--pareto",
            "--param",
            "tol=0.25",
            "--param",
            "min_probes=4",
            "--param",
            "max_probes=12",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "Pareto frontier (avg_bits" in printed and "uniform widths (accuracy)" in printed
