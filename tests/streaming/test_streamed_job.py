"""A job on a causal LM whose fp32 weights do not fit the worker's memory budget
(`BITALLOC_MAX_MEMORY`) runs block streamed end to end, and gives what the same job
on the whole model gives: the layers, the table, the allocation, the quality and the
packed artifact. What a streamed model cannot do yet fails before any work."""

from __future__ import annotations

import llm_models
import pytest
import torch
from safetensors.torch import load_file

from kernels.artifact import WEIGHTS_FILE, load_artifact, read_metadata
from kernels.scheme import choice_key
from sensitivity.models import load_bundle
from sensitivity.sources import ModelSource
from sensitivity.streaming.budget import ENV, plan
from workers.evaluate import measure
from workers.pipeline import JobError, run_job, write_artifact
from workers.spec import JobSpec

BLOCKS = 8  # enough blocks that one block's work is well under the whole model's


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    model = llm_models.llama(seed=3, tied=False, blocks=BLOCKS)
    return llm_models.save_folder(model, tmp_path_factory.mktemp("llama8"), with_tokenizer=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return llm_models.token_dataset(tmp_path_factory.mktemp("ids"), 8, 16, seed=1)


@pytest.fixture
def streamed_budget(folder, monkeypatch):
    """A budget between the streamed path's need and the whole model's."""
    p = plan(folder, budget=2**50)
    assert p.streamed_bytes < p.whole_model_bytes
    monkeypatch.setenv(ENV, str((p.streamed_bytes + p.whole_model_bytes) // 2))
    assert plan(folder).stream


def _job(folder, data, tmp_path, name, **spec):
    spec = JobSpec(model="llama8", budgets={"avg_bits": 5}, weight_bits=[3, 4, 8, 16], pareto_points=0,
                   **spec)
    return run_job(spec, artifact_dir=tmp_path / name,
                   model_source=ModelSource("llama8", "hf", "llama", folder), data_source=data)


def _same_job(whole, streamed):
    """The same layers and table; the same allocation up to float noise in the table (a
    near tie, such as two layers of one size trading widths, may go either way), so the
    allocation's own objective under the whole model's table must be the optimum's."""
    assert [(r.name, r.macs, r.params) for r in streamed.layers] == \
        [(r.name, r.macs, r.params) for r in whole.layers]
    for a, b in zip(whole.layers, streamed.layers):
        assert b.omega_by_bits == pytest.approx(a.omega_by_bits, rel=1e-4, abs=1e-12)
    table = {r.name: r.omega_by_bits for r in whole.layers}
    objective = sum(table[r.name][choice_key((r.w_bits, r.a_bits))] for r in streamed.layers)
    assert objective == pytest.approx(whole.solver.objective, rel=1e-6, abs=1e-12)
    for which in ("full_precision", "uniform"):
        assert getattr(streamed.quality, which) == pytest.approx(getattr(whole.quality, which), rel=1e-5)
    assert streamed.summary.size_bytes == whole.summary.size_bytes


@pytest.mark.parametrize("method", ["fisher", "empirical"])
def test_a_job_over_the_memory_budget_streams_and_equals_the_whole_model(folder, data, tmp_path,
                                                                          monkeypatch, method):
    # the probe block given: under this tight budget the streamed engine's own choice would
    # be a smaller block (`probe_bytes`), another probe stream than the whole model's
    params = {"max_probes": 16, "block": 8} if method == "fisher" else {}
    monkeypatch.delenv(ENV, raising=False)
    whole = _job(folder, data, tmp_path, "whole", method=method, method_params=params)
    source = ModelSource("llama8", "hf", "llama", folder)
    whole_bundle = load_bundle("llama8", source, data)
    p = plan(folder, budget=2**50)
    monkeypatch.setenv(ENV, str((p.streamed_bytes + p.whole_model_bytes) // 2))
    streamed = _job(folder, data, tmp_path, "streamed", method=method, method_params=params)

    assert streamed.sensitivity["streamed"] and not whole.sensitivity["streamed"]
    assert "block streamed" in streamed.model["streaming"]
    assert streamed.model["description"].endswith("block streamed")
    assert set(streamed.peak_rss_mb) == {"load", "layers", "sensitivity", "solve", "evaluate", "artifact"}
    _same_job(whole, streamed)
    if method == "fisher":  # the same probe shards, stopped at the same counts
        assert [r.stats["probes"] for r in streamed.layers] == [r.stats["probes"] for r in whole.layers]
        assert streamed.sensitivity["engine"] == "gn_streamed"

    # the streamed allocation's quality and artifact are the whole model's at that allocation
    choices = {r.name: (r.w_bits, r.a_bits) for r in streamed.layers}
    scheme = streamed.spec.quant.scheme()
    assert streamed.quality.allocation == pytest.approx(measure(whole_bundle, choices, scheme), rel=1e-5)
    write_artifact(whole_bundle, streamed.spec, streamed, tmp_path / "repacked")
    a, b = (load_file(str(tmp_path / n / WEIGHTS_FILE)) for n in ("repacked", "streamed"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert read_metadata(tmp_path / "streamed")["layers"] == read_metadata(tmp_path / "repacked")["layers"]
    ids = torch.randint(0, llm_models.VOCAB, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        za = load_artifact(tmp_path / "repacked")(input_ids=ids).logits
        zb = load_artifact(tmp_path / "streamed")(input_ids=ids).logits
    assert torch.allclose(za, zb)


@pytest.mark.parametrize("spec, reason", [
    ({"method": "hawq_v1"}, "needs the whole model in memory"),
    ({"method": "lrp"}, "needs the whole model in memory"),
    ({"method": "fisher", "quant": {"algorithm": "gptq"}}, "quantizer 'gptq' is not streamed"),
    ({"method": "fisher", "export": "gptq"}, "export 'gptq' is written from the whole model"),
])
def test_what_a_streamed_job_cannot_do_fails_before_the_work(folder, data, tmp_path, streamed_budget,
                                                              spec, reason):
    with pytest.raises(JobError, match=reason):
        _job(folder, data, tmp_path, "refused", **spec)


def test_a_budget_too_small_even_to_stream_fails_with_the_need(folder, data, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "100MiB")
    with pytest.raises(ValueError, match="even block streamed this model needs"):
        _job(folder, data, tmp_path, "small", method="fisher")
