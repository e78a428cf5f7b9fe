"""Jobs on a causal LM end to end (workers.pipeline.run_job): an uploaded tiny
Llama folder, every projection allocated, perplexity the headline with its
direction, the model facts the result states."""

from __future__ import annotations

import llm_models
import pytest

from sensitivity.sources import ModelSource
from workers.pipeline import run_job
from workers.spec import JobSpec


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return llm_models.save_folder(llm_models.llama(tied=True), tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def token_data(tmp_path_factory):
    return llm_models.token_dataset(tmp_path_factory.mktemp("ids"), 6, 24, seed=0)


@pytest.mark.parametrize("method", ["fisher", "empirical"])
def test_a_job_on_a_causal_lm_reports_perplexity(llama_folder, token_data, method):
    spec = JobSpec(model="tiny-llama", method=method, budgets={"avg_bits": 4}, pareto_points=0,
                   method_params={"max_probes": 16} if method == "fisher" else {})
    result = run_job(spec, model_source=ModelSource("tiny-llama", "hf", "llama", llama_folder),
                     data_source=token_data)
    names = [layer.name for layer in result.layers]
    assert len(names) == 1 + 2 * 7  # the tied embedding once, seven projections per block
    assert "lm_head" not in names and not result.unused_layers
    q = result.quality
    assert q.metric == "perplexity" and q.directions["perplexity"] == "lower"
    assert q.directions["top1_agreement"] == "higher"
    assert q.full_precision["top1_agreement"] == 100.0
    assert result.summary.avg_bits <= 4 + 1e-9
    assert result.model["sequence_length"] == 24 and result.model["calibration_tokens"] == 3 * 24
    assert result.model["quantizable_share_pct"] == 100.0
    assert result.layers[0].name == "model.embed_tokens"
