"""The CLI's report reads each metric's direction from the result: the headline
is marked with it, and a drop is the change for the worse either way (results
stored before directions existed count as higher-is-better). And one mapping from
errors to exit statuses serves every command."""

from __future__ import annotations

import pytest

from service.cli import exit_codes
from service.cli.args import UsageError
from service.cli.report import print_report
from service.client import BadRequest, JobFailed, NotFound, ServerError, Unreachable, WaitTimeout
from workers.spec import JobResult


def result(metric: str, directions: dict[str, str], fp: float, uniform: float,
           allocation: float) -> JobResult:
    other = {"kl": 0.0} if metric != "kl" else {"top1": 100.0}
    return JobResult.model_validate({
        "spec": {"model": "digits-cnn", "budgets": {"avg_bits": 4}},
        "model": {"name": "m", "description": "a model"},
        "layers": [{"name": "fc", "kind": "linear", "shape": [4, 4], "params": 16, "macs": 16,
                    "group": None, "w_bits": 4, "a_bits": 16, "bits_per_weight": 4.156,
                    "bytes": 8.3, "omega": 0.5, "omega_by_bits": {"w4a16": 0.5}, "stats": {}}],
        "unused_layers": [],
        "summary": {"size_bytes": 100, "full_precision_bytes": 400, "quantized_layer_bytes": 8.3,
                    "avg_bits": 4.156, "avg_bits_no_overhead": 4.0, "bops": 1.0},
        "solver": {"status": "optimal", "objective": 0.5, "solve_time_s": 0.01, "backend": "cbc",
                   "budget_use": {"avg_bits": [4.156, 4.0]}},
        "quality": {"metric": metric, "directions": directions,
                    "full_precision": {metric: fp, **other}, "uniform": {metric: uniform, **other},
                    "allocation": {metric: allocation, **other}, "uniform_bits": 4,
                    "uniform_size_bytes": 100},
        "frontier_kind": "avg_bits", "pareto": [], "uniform_points": [],
        "sensitivity": {}, "timings": {"load": 0.1},
    })


def test_a_lower_is_better_headline_drops_when_it_rises(capsys):
    print_report(result("perplexity", {"perplexity": "lower", "kl": "lower"}, 10.0, 12.5, 11.0))
    out = capsys.readouterr().out
    assert "quality (perplexity, lower is better): full precision 10.000" in out
    assert "12.500 (drop 2.500)" in out and "allocation 11.000 (drop 1.000)" in out
    assert "  kl (lower is better): full precision 0" in out


def test_an_old_result_without_directions_is_higher_is_better(capsys):
    print_report(result("accuracy", {}, 97.0, 95.0, 96.5))
    out = capsys.readouterr().out
    assert "quality (accuracy, higher is better)" in out
    assert "95.000 (drop 2.000)" in out and "allocation 96.500 (drop 0.500)" in out
    assert "  kl (higher is better)" in out


@pytest.mark.parametrize("error, status", [
    (UsageError("bad flag"), exit_codes.BAD_REQUEST),
    (BadRequest(422, "unknown model"), exit_codes.BAD_REQUEST),
    (NotFound(404, "job x not found"), exit_codes.BAD_REQUEST),
    (ServerError(503, "broker down"), exit_codes.UNREACHABLE),
    (Unreachable("cannot reach"), exit_codes.UNREACHABLE),
    (WaitTimeout({"id": "j", "status": "running"}, 1), exit_codes.TIMEOUT),
    (JobFailed({"id": "j", "status": "failed", "error": "boom"}), exit_codes.FAILED),
])
def test_errors_map_to_one_set_of_exit_statuses(error, status):
    assert exit_codes.for_error(error)[0] == status


def test_a_bug_is_not_mapped():
    assert exit_codes.for_error(KeyError("x")) is None
