"""The whole pipeline on the built-in models: budgets respected, real measurements."""

import pytest

from kernels.fake_quant import fake_quantize_model
from kernels.scheme import QuantConfig
from workers.pipeline import JobError, run_job
from workers.spec import JobSpec

FAST = {"tol": 0.25, "min_probes": 4, "max_probes": 12}


def spec(**kw) -> JobSpec:
    base = {"model": "digits-cnn", "method": "hawq_v2", "method_params": FAST, "budgets": {"avg_bits": 4}}
    return JobSpec.model_validate({**base, **kw})


@pytest.fixture(scope="module")
def digits_result(digits_bundle):
    stages = []
    result = run_job(spec(), lambda stage, frac, msg: stages.append((stage, frac)))
    return result, stages


def test_allocation_respects_the_budget_and_mixes_widths(digits_result):
    result, _ = digits_result
    assert result.solver.status == "optimal"
    assert result.summary.avg_bits <= 4 + 1e-9
    used, limit = result.solver.budget_use["avg_bits"]
    assert used == pytest.approx(result.summary.avg_bits) and limit == 4
    assert len({layer.w_bits for layer in result.layers}) > 1  # a real mixed allocation
    bits = {layer.name: layer.w_bits for layer in result.layers}
    assert bits["block.conv_b"] == bits["block.downsample.0"]  # tied residual pair


def test_size_accounting_includes_the_overhead(digits_result):
    result, _ = digits_result
    for layer in result.layers:
        expected = layer.w_bits if layer.w_bits == 16 else None
        if expected is None:
            assert layer.bits_per_weight > layer.w_bits  # scales and zero points cost bits
        assert layer.bytes == pytest.approx(layer.params * layer.bits_per_weight / 8)
    s = result.summary
    assert s.avg_bits > s.avg_bits_no_overhead
    assert s.size_bytes == pytest.approx(
        s.quantized_layer_bytes + (s.full_precision_bytes - sum(layer.params * 4 for layer in result.layers))
    )


def test_qualities_are_real_measurements(digits_result, digits_bundle):
    result, _ = digits_result
    q = result.quality
    configs = {layer.name: QuantConfig(layer.w_bits) for layer in result.layers}
    again = digits_bundle.evaluate(fake_quantize_model(digits_bundle.model, configs))
    assert q.allocation == pytest.approx(again)
    assert q.full_precision["accuracy"] == pytest.approx(digits_bundle.info["test_accuracy"])
    assert q.uniform_size_bytes >= result.summary.size_bytes - 1e-6
    # 4-bit uniform is above 4.0 average bits once the overhead counts: the nearest not below
    assert q.uniform_bits == 4


def test_progress_reports_every_stage(digits_result):
    _, stages = digits_result
    names = [s for s, _ in stages]
    for stage in ("load", "layers", "sensitivity", "solve", "evaluate"):
        assert stage in names and (stage, 1.0) in stages


def test_peak_memory_is_reported_per_stage(digits_result):
    import resource

    result, _ = digits_result
    peaks = result.peak_rss_mb
    assert list(peaks) == list(result.timings)  # every stage that ran
    assert all(b >= a > 0 for a, b in zip(list(peaks.values()), list(peaks.values())[1:]))
    assert peaks["evaluate"] <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_the_job_seed_draws_the_probes_unless_the_params_name_one(digits_result):
    def traces(result):
        return {r.name: r.stats["trace"] for r in result.layers}

    result, _ = digits_result  # seed 0
    reseeded = run_job(spec(seed=7))
    assert reseeded.sensitivity["params"]["seed"] == 7
    assert traces(reseeded) != pytest.approx(traces(result), rel=1e-3)  # other probes
    named = run_job(spec(seed=7, method_params={**FAST, "seed": 0}))
    assert named.sensitivity["params"]["seed"] == 0
    assert traces(named) == pytest.approx(traces(result), rel=1e-6)  # the same draws, recomputed


def test_pins_exclusions_and_size_budget(digits_bundle):
    result = run_job(spec(budgets={"size_mb": 0.05}, overrides={"pins": {"fc2": 8}, "exclude": ["stem.0"]}))
    bits = {layer.name: layer.w_bits for layer in result.layers}
    assert bits["fc2"] == 8 and bits["stem.0"] == 16
    assert result.summary.size_bytes <= 0.05e6 + 1e-6


def test_budget_below_the_smallest_reachable_size_fails_fast():
    with pytest.raises(JobError, match="no allocation fits the budget"):
        run_job(spec(budgets={"avg_bits": 1.5}, method_params={"max_probes": 1000, "tol": 1e-6}))


def test_unknown_override_layers_are_named():
    with pytest.raises(JobError, match="unknown layers in overrides: nope"):
        run_job(spec(overrides={"pins": {"nope": 4}}))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"budgets": {"avg_bit": 4}}, "unknown budget 'avg_bit'"),
        ({"budgets": {"avg_bits": -1}}, "must be positive"),
        ({"budgets": {}}, "at least 1 item"),
        ({"weight_bits": [4, 7]}, "weight bits must be one of"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_specs_are_rejected_with_a_reason(change, message):
    with pytest.raises(ValueError, match=message):
        spec(**change)


def test_minilm_end_to_end(minilm_bundle):
    result = run_job(spec(model="minilm", method_params={"tol": 0.5, "min_probes": 2, "max_probes": 3}))
    assert result.summary.avg_bits <= 4 + 1e-9
    assert result.unused_layers == ["pooler.dense"]
    q = result.quality
    assert q.metric == "cosine_to_fp" and q.full_precision["cosine_to_fp"] == pytest.approx(100, abs=1e-3)
    assert 50 < q.allocation["cosine_to_fp"] < 100
