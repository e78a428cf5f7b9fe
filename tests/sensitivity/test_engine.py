"""compute_table: cache hits return identical tables without recomputing, an
interrupted computation resumes, and bad parameters fail clearly."""

import pytest
from sens_models import tiny_distill_mlp, tiny_mlp
from sens_run import CHOICES, run_method

from kernels.scheme import QuantScheme
from sensitivity.cache import TableCache
from sensitivity.engine import compute_table
from sensitivity.estimators import empirical, get_estimator, hawq_v2
from sensitivity.layers import discover_layers

QUANT = QuantScheme(group_size=4)


class Stop(Exception):
    pass


def _quiet(*_):
    pass


def _layers(bundle):
    return [layer for layer in discover_layers(bundle) if layer.used]


def test_second_run_is_a_cache_hit_with_the_same_table(tmp_path, monkeypatch):
    calls = []
    real = hawq_v2.estimate
    monkeypatch.setattr(hawq_v2, "estimate", lambda *a: calls.append(1) or real(*a))
    bundle = tiny_mlp()
    params = {"max_probes": 16, "tol": 0.2}
    cache = TableCache(tmp_path)
    first = compute_table("hawq_v2", bundle, _layers(bundle), CHOICES, QUANT, params, _quiet, cache=cache)
    second = compute_table("hawq_v2", bundle, _layers(bundle), list(reversed(CHOICES)), QUANT, params,
                           _quiet, cache=cache)
    assert len(calls) == 1
    assert (first.meta["cache"], second.meta["cache"]) == ("miss", "hit")
    assert second.omega == first.omega and second.layer_stats == first.layer_stats
    assert second.meta["cache_key"] == first.meta["cache_key"]
    # anything that changes the numbers changes the key
    other = compute_table("hawq_v2", bundle, _layers(bundle), CHOICES, QUANT, {**params, "seed": 1},
                          _quiet, cache=cache)
    assert other.meta["cache"] == "miss" and len(calls) == 2
    assert len(list(tmp_path.glob("*.json"))) == 2 and not list(tmp_path.glob("*.partial.json"))


@pytest.mark.parametrize("method, params, make", [
    ("hawq_v2", {"min_probes": 12, "max_probes": 12, "block": 2}, tiny_mlp),
    ("fisher", {"min_probes": 12, "max_probes": 12, "block": 2}, tiny_mlp),
    ("hawq_v1", {"max_iter": 30}, tiny_distill_mlp),
    ("empirical", {}, tiny_mlp),
])
def test_interrupted_run_resumes_to_the_same_table(tmp_path, monkeypatch, method, params, make):
    monkeypatch.setattr(empirical, "ROUND_LAYERS", 1)  # its checkpoints come between rounds of layers
    bundle = make()
    layers = _layers(bundle)
    reference = run_method(method, bundle, params, scheme=QUANT, layers=layers)
    reports = []

    def interrupt(stage, fraction, message):
        if "round shards" in message:  # within a probe round (sensitivity.shards): no checkpoint yet
            return
        reports.append(message)
        if len(reports) == 2:
            raise Stop

    cache = TableCache(tmp_path)
    with pytest.raises(Stop):
        compute_table(method, bundle, layers, CHOICES, QUANT, params, interrupt, cache=cache,
                      checkpoint_interval_s=0)
    assert list(tmp_path.glob("*.partial.json"))
    resumed_reports = []
    table = compute_table(method, bundle, layers, CHOICES, QUANT, params,
                          lambda s, f, m: "round shards" in m or resumed_reports.append(m), cache=cache,
                          checkpoint_interval_s=0)
    assert table.meta["resumed"] is True and table.meta["cache"] == "miss"
    assert len(resumed_reports) < len(reports) + 10  # did not start over from nothing
    for name in reference.omega:
        assert table.omega[name] == pytest.approx(reference.omega[name], rel=1e-9, abs=1e-15)
    assert not list(tmp_path.glob("*.partial.json"))


@pytest.mark.parametrize("method, accepted", [
    ("hawq_v1", "tol, max_iter, seed, backend"),
    ("hawq_v2", "mode, tol, min_probes, max_probes, seed, engine, block, backend"),
    ("fisher", "tol, min_probes, max_probes, seed, engine, block"),
    ("empirical", "none"),
    ("lrp", "rules, eps, attention"),
    ("interlayer", "window, pairs, mode, tol"),
])
def test_unknown_params_list_the_accepted_ones(method, accepted):
    bundle = tiny_mlp()
    with pytest.raises(ValueError, match=f"^{method}: unknown parameter.*bogus.*accepted: {accepted}"):
        run_method(method, bundle, {"bogus": 1}, scheme=QUANT)


@pytest.mark.parametrize("method, params, match", [
    ("hawq_v2", {"tol": 2}, "tol"),
    ("hawq_v2", {"mode": "shared", "backend": "pyhessian"}, "exact"),
    ("hawq_v2", {"block": -1}, "block"),
    ("hawq_v1", {"max_iter": 1}, "max_iter"),
    ("interlayer", {"window": 0}, "window"),
    ("interlayer", {"pairs": "both"}, "pairs"),
    ("fisher", {"engine": "hvp"}, "engine"),
])
def test_bad_param_values_raise(method, params, match):
    bundle = tiny_mlp()
    with pytest.raises(ValueError, match=f"^{method}: .*{match}"):
        run_method(method, bundle, params, scheme=QUANT)


def test_bad_params_fail_before_anything_runs_or_is_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(hawq_v2, "estimate", lambda *a: pytest.fail("the estimator ran"))
    bundle = tiny_mlp()
    with pytest.raises(ValueError, match="tol must be in"):
        compute_table("hawq_v2", bundle, _layers(bundle), CHOICES, QUANT, {"tol": 2}, _quiet,
                      cache=TableCache(tmp_path))
    assert not list(tmp_path.iterdir())


def test_unknown_method_lists_methods():
    with pytest.raises(ValueError, match="unknown method 'hawq_v3'; methods: "
                                         "empirical, fisher, hawq_v1, hawq_v2, interlayer, lrp"):
        get_estimator("hawq_v3")
    bundle = tiny_mlp()
    with pytest.raises(ValueError, match="unknown method 'hawq_v3'"):
        run_method("hawq_v3", bundle)


def test_progress_reports_layer_probes_error_and_time_left():
    bundle = tiny_mlp()
    reports = []
    run_method("hawq_v2", bundle, {"min_probes": 8, "max_probes": 16, "tol": 0.01}, scheme=QUANT,
               progress=lambda *a: reports.append(a))
    # after each round; within a round, its finished shards (sensitivity.shards)
    stage, fraction, message = next(r for r in reports if "round shards" not in r[2])
    assert stage == "sensitivity" and 0 <= fraction <= 1
    assert "probes" in message and "rel. error" in message and "s left" in message
    assert reports[-1][1] == 1.0
