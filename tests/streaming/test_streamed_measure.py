"""Block-streamed measured losses against `sensitivity.measure` on the whole model:
the same full-precision loss and targets, the same loss with each layer quantized
(every layer kind: block linears, embedding, tied or untied head)."""

from __future__ import annotations

import llm_models
import pytest
import torch

from kernels.fake_quant import fake_quantize_weight
from kernels.scheme import QuantScheme
from sensitivity.layers import discover_layers
from sensitivity.measure import calibration_loss, loss_with
from sensitivity.models.lm_loading import load_hf_causal_lm
from sensitivity.quantized import QuantizedWeights
from sensitivity.streaming.hidden import HiddenStates
from sensitivity.streaming.measure import StreamedLosses, distillation_targets
from sensitivity.streaming.skeleton import StreamedCausalLM

CHOICES = [(2, 16), (4, 16)]


@pytest.mark.parametrize("tied", [False, True])
def test_streamed_losses_equal_the_whole_model(tied, tmp_path):
    folder = llm_models.save_folder(llm_models.llama(tied=tied), tmp_path / "model", with_tokenizer=False)
    whole, _ = load_hf_causal_lm(folder)
    bundle = llm_models.bundle(whole)
    lm = StreamedCausalLM(folder)
    inputs = [{k: v for k, v in b.items() if k != "target"} for b in bundle.calibration]
    for got, want in zip(distillation_targets(lm, inputs), bundle.calibration):
        assert torch.equal(got["target"], want["target"])
    names = [layer.name for layer in discover_layers(bundle) if layer.used]
    scheme = QuantScheme(group_size=16)
    qw = QuantizedWeights(bundle, scheme)
    base = calibration_loss(bundle)
    losses = StreamedLosses(lm, bundle.calibration, bundle.output_loss, hidden=HiddenStates(budget=4096))
    assert losses.base == pytest.approx(base, rel=1e-12)
    by_block: dict[int, list[str]] = {}
    for n in names:
        by_block.setdefault(losses._start(n), []).append(n)
    for start, members in by_block.items():
        variants = [(n, lambda m, c=c: fake_quantize_weight(m, scheme.for_choice(c)))
                    for n in members for c in CHOICES]
        got = losses.losses(variants)
        want = [loss_with(bundle, qw, [(n, c)]) for n in members for c in CHOICES]
        assert got == pytest.approx(want, rel=1e-6), (start, members)
        assert all(w != base for w in want)  # each quantized layer moves the loss
    assert all(p.is_meta for p in lm.blocks.parameters())


def test_streamed_empirical_omega_equals_the_estimator(tmp_path):
    from sensitivity.engine import compute_table
    from sensitivity.streaming.measure import streamed_empirical_omega

    folder = llm_models.save_folder(llm_models.qwen2(), tmp_path / "model", with_tokenizer=False)
    whole, _ = load_hf_causal_lm(folder)
    bundle = llm_models.bundle(whole)
    layers = [layer for layer in discover_layers(bundle) if layer.used]
    choices = [(3, 16), (16, 16)]
    scheme = QuantScheme(group_size=16)
    want = compute_table("empirical", bundle, layers, choices, scheme, {}, use_cache=False).omega
    lm = StreamedCausalLM(folder)
    got = streamed_empirical_omega(StreamedLosses(lm, bundle.calibration, bundle.output_loss),
                                   [layer.name for layer in layers], choices, scheme)
    for layer in layers:
        for c in choices:
            assert got[layer.name][c] == pytest.approx(want[layer.name][c], rel=1e-5, abs=1e-9), \
                (layer.name, c)
