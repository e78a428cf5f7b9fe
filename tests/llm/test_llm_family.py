"""The causal-LM family: which folders it claims, what it reads (the built-in prose,
uploaded texts or token ids, labels for the task loss), and quality measured as
perplexity equal to a direct computation."""

from __future__ import annotations

import math

import llm_models
import pytest
import torch
from safetensors.torch import save_file

from kernels.fake_quant import fake_quantize_model
from kernels.scheme import QuantConfig
from sensitivity.catalog import FAMILIES
from sensitivity.data.prose import load_prose
from sensitivity.layers import quantizable_modules
from sensitivity.models import causal_lm, load_bundle
from sensitivity.output_loss import NextTokenCrossEntropyOutput, TokenDistillationKLOutput
from sensitivity.sources import DataSource, ModelSource


def test_claims_causal_lm_architectures_only():
    assert causal_lm.claims({"architectures": ["LlamaForCausalLM"]})
    assert causal_lm.claims({"architectures": ["GPT2LMHeadModel"]})
    assert not causal_lm.claims({"architectures": ["BertModel"]})
    assert not causal_lm.claims({})


def test_full_precision_perplexity_equals_a_direct_computation():
    model = llm_models.gpt2()
    bundle = llm_models.bundle(model)
    quality = bundle.evaluate(model)
    nll = count = 0.0
    for b in llm_models.token_batches(4, 12, 2, seed=2, pad_last=2):  # the bundle's evaluation
        labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
        with torch.no_grad():
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=labels)
        n = int((labels[:, 1:] != -100).sum())
        nll, count = nll + float(out.loss) * n, count + n
    assert quality["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert quality["kl_to_fp"] < 1e-5 and quality["top1_agreement"] == 100.0
    worse = bundle.evaluate(fake_quantize_model(model, {n: QuantConfig(2, 16) for n in
                                                        quantizable_modules(model)}))
    assert worse["kl_to_fp"] > 1e-3 and worse["perplexity"] != quality["perplexity"]
    assert [m.name for m in bundle.metrics] == ["perplexity", "kl_to_fp", "top1_agreement"]
    assert bundle.directions == {"perplexity": "lower", "kl_to_fp": "lower", "top1_agreement": "higher"}
    assert isinstance(bundle.output_loss, TokenDistillationKLOutput) and bundle.zero_residual
    with torch.no_grad():
        assert float(bundle.loss(model, bundle.calibration[0])) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    return llm_models.save_folder(llm_models.gpt2(), tmp_path_factory.mktemp("gpt2"))


def test_an_uploaded_folder_calibrates_on_the_built_in_prose(gpt2_folder):
    source = ModelSource("tiny-gpt2", "hf", "gpt2", gpt2_folder)
    bundle = load_bundle("tiny-gpt2", source)
    assert bundle.headline == FAMILIES["causal-lm"].headline
    info = bundle.info
    assert info["sequence_length"] == 64  # capped by the model's 64 positions
    assert info["calibration_tokens"] == 8 * 64 and info["evaluation_tokens"] == 16 * 64
    assert "chapters I-VI" in info["calibration"] and "chapters VII-XII" in info["evaluation"]
    assert info["model_class"] == "GPT2LMHeadModel" and info["tied_embeddings"] is True
    assert bundle.cache_salt
    # the two halves of the prose do not overlap, in either work
    prose = load_prose()
    paragraphs = lambda text: {p for p in text.split("\n\n") if len(p) > 80}  # noqa: E731
    assert not paragraphs(prose.calibration) & paragraphs(prose.evaluation)
    assert "SESSION I. CONTENT" in prose.calibration and "SESSION IV. IMAGE" in prose.evaluation
    assert len(prose.calibration) + len(prose.evaluation) > 400_000  # a few hundred KB
    assert "+++" not in prose.calibration + prose.evaluation  # the e-text's keyword boxes


def test_uploaded_texts_and_token_ids(gpt2_folder, tmp_path):
    source = ModelSource("tiny-gpt2", "hf", "gpt2", gpt2_folder)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"Alice said {i} things to the Queen of Hearts." for i in range(10)))
    bundle = load_bundle("tiny-gpt2", source, DataSource("texts", "text", texts))
    assert bundle.info["calibration_sequences"] == 5 and "texts" in bundle.info["calibration"]
    assert isinstance(bundle.output_loss, TokenDistillationKLOutput)

    ids = torch.randint(0, llm_models.VOCAB, (6, 16))
    plain = tmp_path / "ids.safetensors"
    save_file({"inputs": ids}, str(plain))
    bundle = load_bundle("tiny-gpt2", source, DataSource("ids", "safetensors", plain))
    assert isinstance(bundle.output_loss, TokenDistillationKLOutput)
    labelled = tmp_path / "labelled.safetensors"
    save_file({"inputs": ids, "labels": ids.clone()}, str(labelled))
    bundle = load_bundle("tiny-gpt2", source, DataSource("lab", "safetensors", labelled))
    assert isinstance(bundle.output_loss, NextTokenCrossEntropyOutput) and not bundle.zero_residual
    assert "cross-entropy" in bundle.info["loss"]
    batch = bundle.calibration[0]
    with torch.no_grad():
        want = bundle.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        got = bundle.loss(bundle.model, batch)
    assert float(got) == pytest.approx(float(want), rel=1e-5)

    bad = tmp_path / "bad.safetensors"
    save_file({"inputs": ids, "labels": torch.zeros(6, dtype=torch.long)}, str(bad))
    with pytest.raises(ValueError, match="labels"):
        load_bundle("tiny-gpt2", source, DataSource("bad", "safetensors", bad))


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_bundle("fake", ModelSource("fake", "gguf", "llama", path))


def test_a_gguf_file_loads_as_the_model_it_holds(tmp_path):
    from sensitivity.data.gguf_header import read_gguf_header

    model = llm_models.llama(tied=True)
    path = llm_models.write_gguf(model, llm_models.tokenizer(), tmp_path / "tiny.gguf")
    header = read_gguf_header(path)
    assert (header.architecture, header.name, header.version) == ("llama", "tiny-llama", 3)
    bundle = load_bundle("tiny", ModelSource("tiny", "gguf", "llama", path))
    ids = torch.randint(0, llm_models.VOCAB, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(input_ids=ids).logits, model(input_ids=ids).logits)
    assert bundle.info["source"] == "uploaded GGUF file, dequantized to fp32"
    assert bundle.info["gguf_conversion"] in ("dequantized to fp32 and cached",
                                              "reused the cached fp32 conversion")
    again = load_bundle("tiny", ModelSource("tiny", "gguf", "llama", path))
    assert again.info["gguf_conversion"] == "reused the cached fp32 conversion"
    assert again.cache_salt == bundle.cache_salt and "chapters I-VI" in again.info["calibration"]
