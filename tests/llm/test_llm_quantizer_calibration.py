"""The causal-LM family's quantizer calibration (`ModelBundle.quantizer_calibration`):
GPTQ / AdaQuant take their layer inputs from many more windows of the prose's
calibration half than the sensitivity methods' 8, never from the held-out half; on
uploaded data, from its calibration rows."""

from __future__ import annotations

import llm_models
import pytest
import torch

from kernels.scheme import ACTIVATION_BITS, QuantScheme
from sensitivity.data.prose import load_prose
from sensitivity.models import causal_lm, load_bundle
from sensitivity.quantized import QuantizedWeights
from sensitivity.sources import DataSource, ModelSource

pytestmark = pytest.mark.usefixtures("single_thread")

LENGTH = 64  # the tiny Llama's positions


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return llm_models.save_folder(llm_models.llama(), tmp_path_factory.mktemp("llama"))


def source(folder):
    return ModelSource("tiny-llama", "hf", "llama", folder)


def rows(batches) -> list[torch.Tensor]:
    return [row for b in batches for row in b["input_ids"]]


def test_the_quantizer_calibrates_on_more_of_the_calibration_half_only(llama_folder):
    bundle = load_bundle("tiny-llama", source(llama_folder))
    quantizer, info = bundle.quantizer_calibration, bundle.info
    assert bundle.quantizer_batches is quantizer
    windows = rows(quantizer)
    assert len(windows) == causal_lm.QUANTIZER_SEQUENCES == info["quantizer_calibration_sequences"]
    assert all(w.shape == (LENGTH,) for w in windows)
    assert info["quantizer_calibration_tokens"] == causal_lm.QUANTIZER_SEQUENCES * LENGTH
    assert "chapters I-VI" in info["quantizer_calibration"]
    assert [int(b["input_ids"].shape[0]) for b in quantizer] == \
        [causal_lm.QUANTIZER_BATCH] * (causal_lm.QUANTIZER_SEQUENCES // causal_lm.QUANTIZER_BATCH)
    assert all(set(b) == {"input_ids", "attention_mask"} for b in quantizer)  # input-only
    # the sensitivity methods' calibration is unchanged: the first 8 windows, with targets
    assert info["calibration_tokens"] == causal_lm.CALIBRATION_SEQUENCES * LENGTH
    assert all("target" in b for b in bundle.calibration)
    assert torch.equal(torch.stack(rows(bundle.calibration)),
                       torch.stack(windows[:causal_lm.CALIBRATION_SEQUENCES]))
    # every window is text of the calibration half, none of the held-out half
    prose = load_prose()
    for w in windows:
        text = bundle.tokenizer.decode(w)
        assert text in prose.calibration and text not in prose.evaluation


def test_as_many_windows_as_the_calibration_half_holds(llama_folder, monkeypatch):
    monkeypatch.setattr(causal_lm, "QUANTIZER_SEQUENCES", 10**6)
    bundle = load_bundle("tiny-llama", source(llama_folder))
    tokens = bundle.tokenizer(load_prose().calibration, add_special_tokens=False)["input_ids"]
    n = len(tokens) // LENGTH
    assert causal_lm.QUANTIZER_BATCH * 2 < n < 10**6
    assert len(rows(bundle.quantizer_calibration)) == n == bundle.info["quantizer_calibration_sequences"]
    assert bundle.info["quantizer_calibration_tokens"] == n * LENGTH


def test_gptq_takes_its_layer_inputs_from_the_quantizer_calibration(llama_folder):
    bundle = load_bundle("tiny-llama", source(llama_folder))
    tokens = bundle.info["quantizer_calibration_tokens"]
    assert tokens != bundle.info["calibration_tokens"]
    weights = QuantizedWeights(bundle, QuantScheme(group_size=16, algorithm="gptq"))
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        assert weights.hessian(name).rows == tokens  # per-layer codes for the tables
    seen: dict[str, int] = {}
    calibrate = weights._calibrate

    def record(name, module, hessian, config):
        seen[name] = hessian.rows
        return calibrate(name, module, hessian, config)

    weights._calibrate = record
    names = [n for n, _ in bundle.model.named_modules() if n.startswith("model.layers.")
             and n.endswith("_proj")]
    applied = weights.apply({n: (3, ACTIVATION_BITS) for n in names})  # sequential inputs
    assert len(applied.order) == len(names) == 14
    assert seen == {n: tokens for n in names}


def test_uploaded_texts_calibrate_the_quantizer_with_their_calibration_rows(llama_folder, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"The Hatter said {i} things to the Dormouse." for i in range(12)))
    bundle = load_bundle("tiny-llama", source(llama_folder), DataSource("texts", "text", texts))
    assert bundle.quantizer_calibration is None and bundle.quantizer_batches is bundle.calibration
    info = bundle.info
    assert info["quantizer_calibration_sequences"] == info["calibration_sequences"] == 6
    assert info["quantizer_calibration_tokens"] == info["calibration_tokens"]
    assert "the calibration sequences" in info["quantizer_calibration"]
