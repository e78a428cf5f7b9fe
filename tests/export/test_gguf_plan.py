"""The `gguf-plan` export (llama.cpp): every tensor of the model gets a GGUF type valid
for its rows, under the name llama.cpp's converter writes (checked against the
converter's own file for smollm2-135m), the plan's size is the sum of its types' sizes
and the job's accounting; a job through run_job offers each layer only the widths whose
type fits its rows and writes the plan and the exact llama-quantize command; what the
format cannot take is refused with the reason."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from pydantic import ValidationError

from kernels.export.gguf_file import GGUF_FILE
from kernels.export.gguf_plan import (
    COMMAND_FILE,
    PLAN_FILE,
    PLAN_JSON,
    build_plan,
    parse_plan_lines,
    tensor_names,
)
from kernels.export.registry import write_export
from kernels.fake_quant import fake_quantize_model
from kernels.scheme import GGUF_TYPES, QuantScheme, gguf_widths
from sensitivity.sources import ModelSource
from tests.llm import llm_models
from workers.pipeline import JobError, run_job
from workers.spec import JobSpec

SCHEME = QuantScheme(grid="gguf")


def kquant_llama(tied: bool = True):
    """A tiny Llama whose down_proj rows (256) take k-quants and whose other rows (64)
    take the 32-block types."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=llm_models.VOCAB, hidden_size=64, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, tie_word_embeddings=tied)
    return LlamaForCausalLM(config).eval()


def layer_modules(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))
            and not (n == "lm_head" and model.config.tie_word_embeddings)]


def at_width(model, bits: int) -> dict:
    """Each layer at `bits`, or the narrowest width above it that its rows can take."""
    modules = dict(model.named_modules())
    return {n: SCHEME.config(min(b for b in gguf_widths(modules[n].weight.shape[1]) if b >= bits))
            for n in layer_modules(model)}


@pytest.mark.parametrize("tied", [True, False])
def test_every_tensor_gets_a_valid_type_and_the_size_is_the_sum(tied, tmp_path):
    model = kquant_llama(tied)
    configs = at_width(model, 2)
    write_export("gguf-plan", model, configs, tmp_path, {"model": "tiny"})
    assert {p.name for p in tmp_path.iterdir()} == {PLAN_FILE, COMMAND_FILE, PLAN_JSON, GGUF_FILE,
                                                    "allocation.json"}
    plan = json.loads((tmp_path / PLAN_JSON).read_text())
    types = parse_plan_lines((tmp_path / PLAN_FILE).read_text())
    params = dict(model.named_parameters())
    assert len(types) == len(params) == len(plan["tensors"])  # every tensor, once
    assert ("output.weight" in types) == (not tied)  # a tied head is the token embedding
    assert "token_embd.weight" in types and "output_norm.weight" in types
    for entry in plan["tensors"]:
        t = GGUF_TYPES[entry["type"]]
        rows_k = entry["shape"][-1]
        assert t.fits(rows_k) and types[entry["name"]] == entry["type"]
        n = math.prod(entry["shape"])
        assert entry["bytes"] == n // t.block * t.block_bytes
        if len(entry["shape"]) == 1:
            assert entry["type"] == "F32"
    assert {types[f"blk.{i}.ffn_down.weight"] for i in range(2)} == {"Q2_K"}  # rows of 256
    assert {types[f"blk.{i}.attn_q.weight"] for i in range(2)} == {"Q4_0"}  # rows of 64
    assert plan["size_bytes"] == sum(e["bytes"] for e in plan["tensors"])
    # llama-quantize's patterns are regexes searched in the name: every line is anchored
    for line in (tmp_path / PLAN_FILE).read_text().splitlines():
        pattern, qtype = line.rsplit("=", 1)
        matches = [name for name in types if re.search(pattern, name)]
        assert len(matches) == 1 and qtype == qtype.lower()
    command = (tmp_path / COMMAND_FILE).read_text()
    assert (f"llama-quantize --tensor-type-file {PLAN_FILE} model-f16.gguf model-bitalloc.gguf "
            "Q4_0\n") in command
    assert "convert_hf_to_gguf.py MODEL_DIR --outtype f16 --outfile model-f16.gguf" in command


@pytest.mark.parametrize("tied", [True, False])
def test_the_gguf_file_loads_in_transformers_with_the_evaluated_weights(tied, tmp_path):
    """transformers reads our GGUF file (decoding with the `gguf` package, undoing llama.cpp's
    q/k order): every weight is exactly the fake-quantized one, and so are the logits."""
    from transformers import AutoModelForCausalLM

    model = kquant_llama(tied)
    configs = at_width(model, 2)  # Q2_K down_proj, Q4_0 elsewhere
    configs["model.layers.1.mlp.down_proj"] = SCHEME.config(5)  # Q5_K
    configs["model.layers.0.mlp.down_proj"] = SCHEME.config(6)  # Q6_K
    configs["model.layers.0.self_attn.k_proj"] = SCHEME.config(8)  # Q8_0
    configs["model.layers.0.self_attn.q_proj"] = SCHEME.config(16)  # F16
    write_export("gguf-plan", model, configs, tmp_path, {"model": "tiny"})
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=GGUF_FILE).eval()
    assert loaded.config.tie_word_embeddings == tied
    reference = fake_quantize_model(model, configs)
    got, want = loaded.state_dict(), reference.state_dict()
    assert all(torch.equal(got[k].float(), want[k].float()) for k in want)
    ids = torch.randint(0, llm_models.VOCAB, (2, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, reference(ids).logits)


def test_a_width_the_rows_cannot_take_is_not_written(tmp_path):
    model = kquant_llama()
    configs = at_width(model, 4)
    configs["model.layers.0.self_attn.q_proj"] = SCHEME.config(2)  # rows of 64: no Q2_K
    with pytest.raises(ValueError, match="rows of 64 weights take GGUF types at \\[4, 5, 8, 16\\]"):
        build_plan(model, configs)


def test_smollm2_plan_names_the_tensors_of_llama_cpps_own_file():
    """The names of every tensor of smollm2-135m (built from its GGUF file's config on the
    meta device: no weights needed) are exactly those the converter wrote in that file."""
    import gguf
    from transformers import AutoModelForCausalLM, LlamaConfig

    from sensitivity.models.smollm2 import gguf_path

    reader = gguf.GGUFReader(gguf_path())
    def field(key):
        return int(reader.fields[f"llama.{key}"].contents())
    shapes = {t.name: tuple(int(d) for d in t.shape)[::-1] for t in reader.tensors}
    config = LlamaConfig(vocab_size=shapes["token_embd.weight"][0], hidden_size=field("embedding_length"),
                         intermediate_size=field("feed_forward_length"),
                         num_hidden_layers=field("block_count"),
                         num_attention_heads=field("attention.head_count"),
                         num_key_value_heads=field("attention.head_count_kv"), tie_word_embeddings=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    plan = build_plan(model, at_width(model, 2))
    assert sorted(e.name for e in plan) == sorted(t.name for t in reader.tensors)  # 272 tensors
    assert all(shapes[e.name] == e.shape for e in plan)
    types = {e.name: e.type for e in plan}
    assert types["blk.0.ffn_down.weight"] == "Q2_K"  # rows of 1536 = 6 super-blocks
    assert types["blk.0.ffn_up.weight"] == types["token_embd.weight"] == "Q4_0"  # rows of 576


def test_an_architecture_the_converter_does_not_name_is_refused():
    with pytest.raises(ValueError, match="llama, mistral, qwen2, qwen3 models; this is model_type 'gpt2'"):
        tensor_names(llm_models.gpt2())
    assert tensor_names(llm_models.qwen2())["model.layers.0.self_attn.q_proj.bias"] == "blk.0.attn_q.bias"


@pytest.fixture(scope="module")
def llama_source(tmp_path_factory):
    folder = llm_models.save_folder(kquant_llama(), tmp_path_factory.mktemp("kllama"))
    return ModelSource("tiny-llama", "hf", "llama", folder)


def test_a_job_exports_a_plan_of_its_allocation(llama_source, tmp_path):
    spec = JobSpec(model="tiny-llama", budgets={"avg_bits": 4.2}, pareto_points=0, export="gguf-plan",
                   method_params={"max_probes": 4, "min_probes": 2})
    assert spec.quant.grid == "gguf"  # the format's grid
    result = run_job(spec, artifact_dir=tmp_path, model_source=llama_source)
    types = parse_plan_lines((tmp_path / PLAN_FILE).read_text())
    plan = json.loads((tmp_path / PLAN_JSON).read_text())
    for layer in result.layers:  # each layer at a width its rows take, at the type's true bpw
        k = layer.shape[-1]
        assert layer.w_bits in gguf_widths(k)
        assert layer.bits_per_weight == pytest.approx(
            16.0 if layer.w_bits == 16 else GGUF_TYPES[plan_type(plan, layer.name)].bits_per_weight)
    down = [layer.w_bits for layer in result.layers if layer.name.endswith("down_proj")]
    assert result.summary.avg_bits <= 4.2 + 1e-9
    assert abs(plan["size_bytes"] - result.summary.size_bytes) <= 0.01 * plan["size_bytes"]
    assert len(types) == len(dict(kquant_llama().named_parameters()))
    allocation = json.loads((tmp_path / "allocation.json").read_text())
    assert allocation["export"] == "gguf-plan" and allocation["quant"]["grid"] == "gguf"
    assert min(down) < 4 or max(layer.w_bits for layer in result.layers) > 4  # a real mix


def plan_type(plan: dict, module: str) -> str:
    source = f"{module}.weight"
    return next(e["type"] for e in plan["tensors"] if e["source"] == source)


def test_what_the_format_cannot_take_is_refused(llama_source, tmp_path):
    with pytest.raises(ValidationError, match="algorithm 'gptq' cannot run on it; use 'rtn'"):
        JobSpec(model="tiny-llama", budgets={"avg_bits": 5}, export="gguf-plan",
                quant={"algorithm": "gptq"})
    with pytest.raises(ValidationError,
                       match="export 'gguf-plan' stores the 'gguf' grid, not quant.grid 'group'"):
        JobSpec(model="tiny-llama", budgets={"avg_bits": 5}, export="gguf-plan", quant={"grid": "group"})
    with pytest.raises(ValidationError, match="quant.grid 'gguf' \\(export 'gguf-plan' does\\)"):
        JobSpec(model="tiny-llama", budgets={"avg_bits": 5}, quant={"grid": "gguf"})
    with pytest.raises(ValidationError, match="symmetric and mse_clip do not apply"):
        JobSpec(model="tiny-llama", budgets={"avg_bits": 5}, export="gguf-plan", quant={"symmetric": True})
    pinned = JobSpec(model="tiny-llama", budgets={"avg_bits": 5}, export="gguf-plan", pareto_points=0,
                     overrides={"pins": {"model.layers.0.self_attn.q_proj": 2}})
    with pytest.raises(JobError, match="q_proj has rows of 64 weights, which GGUF types hold at "
                                       "\\[4, 5, 8, 16\\] bits only"):
        run_job(pinned, artifact_dir=tmp_path, model_source=llama_source)
    with pytest.raises(JobError, match="names tensors as llama.cpp's converter writes them"):
        run_job(JobSpec(model="digits-cnn", budgets={"avg_bits": 5}, export="gguf-plan", pareto_points=0))


def test_the_manifest_serves_the_format():
    from workers.manifest import manifest

    served = {f["name"]: f for f in manifest()["exports"]}
    assert served["gguf-plan"]["weight_bits"] == [2, 3, 4, 5, 6, 8, 16]
    assert "llama-quantize" in served["gguf-plan"]["description"]


def test_a_model_read_from_a_gguf_file_requantizes_that_file(tmp_path):
    """The job's reference is the GGUF file's values, so the command quantizes that file."""
    path = llm_models.write_gguf(kquant_llama(), llm_models.tokenizer(), tmp_path / "tiny.gguf")
    spec = JobSpec(model="tiny-gguf", budgets={"avg_bits": 5}, pareto_points=0, export="gguf-plan",
                   method_params={"max_probes": 2, "min_probes": 2})
    run_job(spec, artifact_dir=tmp_path / "out", model_source=ModelSource("tiny-gguf", "gguf", "llama", path))
    command = (tmp_path / "out" / COMMAND_FILE).read_text()
    assert (f"llama-quantize --allow-requantize --tensor-type-file {PLAN_FILE} tiny.gguf "
            "model-bitalloc.gguf ") in command and "convert_hf_to_gguf" not in command
    assert json.loads((tmp_path / "out" / PLAN_JSON).read_text())["source"] == "tiny.gguf"
