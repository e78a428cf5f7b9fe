"""Block-streamed evaluation of an allocation against the causal-LM family's
`evaluate` on the whole fake-quantized model."""

from __future__ import annotations

import llm_models
import pytest

from kernels.fake_quant import fake_quantize_model
from kernels.scheme import QuantScheme
from sensitivity.layers import discover_layers
from sensitivity.models.lm_loading import load_hf_causal_lm
from sensitivity.streaming.evaluate import StreamedEvaluation
from sensitivity.streaming.skeleton import StreamedCausalLM


@pytest.mark.parametrize("tied", [False, True])
def test_streamed_quality_equals_the_family_evaluation(tied, tmp_path):
    folder = llm_models.save_folder(llm_models.llama(tied=tied), tmp_path / "model", with_tokenizer=False)
    whole, _ = load_hf_causal_lm(folder)
    evaluation = llm_models.token_batches(4, 12, 2, seed=2, pad_last=2)
    bundle = llm_models.bundle(whole, evaluation=evaluation)
    names = [layer.name for layer in discover_layers(bundle) if layer.used]
    scheme = QuantScheme(group_size=16)
    # an allocation: widths cycling over the layers, the embedding (and a tied head) included
    widths = [2, 3, 4, 8, 16]
    configs = {n: scheme.for_choice((widths[k % len(widths)], 16)) for k, n in enumerate(names)}
    want = bundle.evaluate(fake_quantize_model(whole, configs))
    lm = StreamedCausalLM(folder)
    quality = StreamedEvaluation(lm, evaluation, hidden_budget=0)
    got = quality(configs)
    for metric in ("perplexity", "kl_to_fp", "top1_agreement"):
        assert got[metric] == pytest.approx(want[metric], rel=1e-6), metric
    fp = quality({})
    assert fp["kl_to_fp"] == pytest.approx(0.0, abs=1e-5) and fp["top1_agreement"] == 100.0  # fp16 reference
    assert fp == pytest.approx(bundle.evaluate(whole), rel=1e-6)
    assert all(p.is_meta for p in lm.blocks.parameters())
    assert lm.decoder.embed_tokens.weight.equal(whole.model.embed_tokens.weight)  # restored
