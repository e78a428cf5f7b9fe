"""A causal-LM job exported as compressed-tensors through run_job: the folder is
complete (config, weights, tokenizer, allocation), transformers loads it, and its
logits equal the fake-quantized model's at the job's allocation. The format's limits
reach the allocation: the embedding leaves the quantizable layers, a group size that does not
divide a layer's inputs is refused before any work."""

from __future__ import annotations

import json

import llm_models
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kernels.fake_quant import fake_quantize_model
from sensitivity.models import load_bundle
from sensitivity.sources import ModelSource
from workers.pipeline import JobError, run_job
from workers.spec import JobSpec

pytest.importorskip("compressed_tensors")


@pytest.fixture(scope="module")
def llama_source(tmp_path_factory):
    folder = llm_models.save_folder(llm_models.llama(tied=True), tmp_path_factory.mktemp("llama"))
    return ModelSource("tiny-llama", "hf", "llama", folder)


def test_a_compressed_tensors_export_loads_with_the_same_outputs(llama_source, tmp_path):
    spec = JobSpec(model="tiny-llama", method="empirical", budgets={"avg_bits": 10},
                   pareto_points=0, export="compressed-tensors",
                   quant={"group_size": 16, "symmetric": True})
    result = run_job(spec, artifact_dir=tmp_path, model_source=llama_source)
    bits = {layer.name: layer.w_bits for layer in result.layers}
    # the format cannot quantize the (tied) embedding: it leaves the job's quantizable
    # layers, so the average bits are over the projections alone
    assert result.export_unquantized == ["model.embed_tokens"]
    assert "model.embed_tokens" not in bits and min(bits.values()) < 16
    params = {layer.name: layer.params for layer in result.layers}
    assert result.summary.avg_bits == pytest.approx(
        sum(layer.params * layer.bits_per_weight for layer in result.layers) / sum(params.values()))
    assert {"config.json", "model.safetensors", "allocation.json", "tokenizer.json"} <= {
        p.name for p in tmp_path.iterdir()}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    AutoTokenizer.from_pretrained(tmp_path)
    bundle = load_bundle("tiny-llama", llama_source)
    scheme = spec.quant.scheme()
    reference = fake_quantize_model(bundle.model, {n: scheme.config(b) for n, b in bits.items()})
    ids = torch.randint(0, llm_models.VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits.float(), reference.half().float()(ids).logits,
                                   rtol=1e-2, atol=2e-3)


def test_a_group_size_the_layers_do_not_fit_is_refused_before_any_work(llama_source, tmp_path):
    spec = JobSpec(model="tiny-llama", budgets={"avg_bits": 10}, pareto_points=0,
                   export="compressed-tensors", quant={"group_size": 20, "symmetric": True})
    with pytest.raises(JobError, match="needs whole groups.*group_size 16 divides them all"):
        run_job(spec, artifact_dir=tmp_path, model_source=llama_source)


def test_the_format_sets_the_grid_it_loads_where_the_job_left_it_at_the_default(tmp_path):
    # 192-wide inputs (like smollm2-135m's 576) hold no whole groups of 128: a job at the
    # default group size and symmetry gets groups of 64, symmetric; a group size of
    # its own that does not fit is refused
    folder = llm_models.save_folder(llm_models.llama(tied=True, hidden=192, intermediate=256),
                                    tmp_path / "wide")
    source = ModelSource("wide-llama", "hf", "llama", folder)
    spec = JobSpec(model="wide-llama", method="empirical", budgets={"avg_bits": 5},
                   pareto_points=0, export="compressed-tensors")
    result = run_job(spec, artifact_dir=tmp_path / "out", model_source=source)
    assert (result.spec.quant.group_size, result.spec.quant.symmetric) == (64, True)
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert {g["weights"]["group_size"] for g in config["config_groups"].values()} == {64}
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    # the same spec as the service stores it (every field set) takes the same groups
    stored = JobSpec.model_validate(spec.model_dump(mode="json"))
    assert run_job(stored, model_source=source).spec.quant.group_size == 64
    other = JobSpec(model="wide-llama", budgets={"avg_bits": 5}, pareto_points=0,
                    export="compressed-tensors", quant={"group_size": 96})
    with pytest.raises(JobError, match="group_size 64 divides them all"):
        run_job(other, model_source=source)
