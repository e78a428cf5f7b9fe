"""A causal-LM job with activation bits exported as compressed-tensors (issue #17): the
config groups carry the job's input quantizers (static per-tensor ranges calibrated by the
job, their scales and zero points as tensors), the library parses them, transformers' CPU
loader runs them, and its logits equal the job's fake-quantized W8A8 model's. The format
keeps inputs of 16-bit layers at 16 bits before the integer program solves."""

from __future__ import annotations

import json

import llm_models
import pytest
import torch
from safetensors.torch import load_file

from sensitivity.layers import discover_layers
from sensitivity.models import load_bundle
from sensitivity.sources import ModelSource
from workers.pipeline import run_job
from workers.problem import build_problem
from workers.spec import JobSpec

pytest.importorskip("compressed_tensors")


@pytest.fixture(scope="module")
def llama_source(tmp_path_factory):
    folder = llm_models.save_folder(llm_models.llama(tied=True), tmp_path_factory.mktemp("llama"))
    return ModelSource("tiny-llama", "hf", "llama", folder)


def test_a_w8a8_job_exports_its_input_quantizers_and_loads_with_the_same_outputs(llama_source,
                                                                                 tmp_path):
    from compressed_tensors.quantization import QuantizationConfig
    from transformers import AutoModelForCausalLM

    from sensitivity.quantized import QuantizedWeights

    spec = JobSpec(model="tiny-llama", method="empirical", weight_bits=[8], activation_bits=[8],
                   budgets={"bops": 1e15}, pareto_points=0, export="compressed-tensors",
                   quant={"group_size": 16, "symmetric": True})
    result = run_job(spec, artifact_dir=tmp_path, model_source=llama_source)
    assert {(layer.w_bits, layer.a_bits) for layer in result.layers} == {(8, 8)}
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(qc)
    for group in parsed.config_groups.values():
        ia = group.input_activations
        assert (ia.num_bits, ia.strategy, ia.dynamic, ia.symmetric) == (8, "tensor", False, False)
    records = json.loads((tmp_path / "allocation.json").read_text())["activations"]
    assert set(records) == {layer.name for layer in result.layers}
    tensors = load_file(str(tmp_path / "model.safetensors"))
    for name, record in records.items():
        assert float(tensors[f"{name}.input_scale"]) == pytest.approx(record["scale"], rel=1e-7)
        assert int(tensors[f"{name}.input_zero_point"]) == round(record["zero"]) - 128
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    bundle = load_bundle("tiny-llama", llama_source)
    reference = QuantizedWeights(bundle, spec.quant.scheme()).apply(
        {layer.name: (8, 8) for layer in result.layers}).model
    with torch.no_grad():  # the folder holds the other tensors in fp16
        for key, t in reference.state_dict().items():
            if key.removesuffix(".weight") not in records and t.is_floating_point():
                t.copy_(t.half().float())
    ids = torch.randint(0, llm_models.VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, reference(ids).logits, rtol=1e-3, atol=1e-3)


def test_16_bit_weights_keep_16_bit_inputs_where_the_format_needs_it(llama_source):
    bundle = load_bundle("tiny-llama", llama_source)
    layers = [layer for layer in discover_layers(bundle) if layer.kind != "embedding"]
    common = {"model": "tiny-llama", "method": "empirical", "weight_bits": [4, 8, 16],
              "activation_bits": [8, 16], "budgets": {"bops": 1e9}}
    for export, sixteen_with_8 in (("compressed-tensors", False), ("bitalloc", True)):
        spec = JobSpec.model_validate({**common, "export": export,
                                       "quant": {"group_size": 16, "symmetric": True}})
        problem = build_problem(spec, bundle, layers, None, spec.quant.scheme())
        options = {c for layer in problem.layers for c in layer.options}
        assert (8, 8) in options and (4, 8) in options and (16, 16) in options
        assert ((16, 8) in options) == sixteen_with_8
