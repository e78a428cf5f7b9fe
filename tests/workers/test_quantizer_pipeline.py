"""A job with the GPTQ quantizer through the whole pipeline: its own table (the
quantizer is in the cache key), its evaluation and its artifact on one set of codes."""

import pytest
import torch

from kernels.artifact import load_artifact
from sensitivity.models.digits_cnn import DigitsCNN
from workers.pipeline import run_job
from workers.spec import JobSpec

FAST = {"tol": 0.25, "min_probes": 4, "max_probes": 12}


def spec(algorithm: str, bits: float = 3.0) -> JobSpec:
    return JobSpec.model_validate({
        "model": "digits-cnn", "method": "hawq_v2", "method_params": FAST,
        "budgets": {"avg_bits": bits}, "pareto_points": 0, "quant": {"algorithm": algorithm}})


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small CNN: one thread beats two on a shared box
    try:
        out = {}
        for algorithm in ("rtn", "gptq"):
            folder = tmp_path_factory.mktemp(algorithm)
            messages = []
            result = run_job(spec(algorithm), lambda s, f, m, into=messages: into.append((s, m)),
                             artifact_dir=folder)
            out[algorithm] = (result, folder, messages)
        yield out
    finally:
        torch.set_num_threads(threads)


def test_the_quantizer_is_in_the_table_key_and_the_result(jobs):
    rtn, gptq = jobs["rtn"][0], jobs["gptq"][0]
    assert rtn.sensitivity["cache_key"] != gptq.sensitivity["cache_key"]
    assert "quantizer" not in rtn.sensitivity
    meta = gptq.sensitivity["quantizer"]
    assert meta["settings"]["algorithm"] == "gptq" and meta["rtn_layers"] == {}
    assert gptq.spec.quant.algorithm == "gptq"
    # ΔW_l(b) is GPTQ's: the Ω of the same curvature differs at the low widths
    omega = {r.name: r.omega_by_bits for r in rtn.layers}
    assert any(r.omega_by_bits["w2a16"] != omega[r.name]["w2a16"] for r in gptq.layers)


def test_gptq_reports_progress_per_layer_and_width(jobs):
    messages = [m for s, m in jobs["gptq"][2] if m.startswith("gptq:")]
    assert any("at 2 bits" in m for m in messages)
    assert any(m.endswith("sequential)") for m in messages)


def test_the_artifact_holds_the_evaluated_codes(jobs):
    """The packed model computes what was evaluated: the codes are not re-quantized."""
    from sensitivity.models import load_model

    bundle = load_model("digits-cnn")
    for algorithm in ("rtn", "gptq"):
        result, folder, _ = jobs[algorithm]
        quality = bundle.evaluate(load_artifact(folder, DigitsCNN))
        assert quality == pytest.approx(result.quality.allocation, rel=1e-5, abs=1e-6)


def test_a_second_budget_reuses_the_table(jobs):
    again = run_job(spec("gptq", 3.5))
    assert again.sensitivity["cache_hit"] is True
    assert again.sensitivity["cache_key"] == jobs["gptq"][0].sensitivity["cache_key"]


def test_calibration_too_small_for_the_hessian_fails_the_job_with_the_reason(monkeypatch):
    """No damping and one calibration image: the layers' Hessians are singular."""
    from sensitivity import models
    from workers.pipeline import JobError

    load = models.load_bundle

    def few_images(*args, **kwargs):
        bundle = load(*args, **kwargs)
        bundle.calibration = [{k: v[:1] for k, v in bundle.calibration[0].items()}]
        return bundle

    monkeypatch.setattr("workers.pipeline.load_bundle", few_images)
    undamped = {"algorithm": "gptq", "damping": 0.0}
    bad = JobSpec.model_validate({**spec("gptq").model_dump(), "quant": undamped})
    with pytest.raises(JobError, match="not positive definite even with damping 0.0"):
        run_job(bad)
