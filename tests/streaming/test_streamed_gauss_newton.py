"""Block-streamed Gauss–Newton probe norms against the whole-model `OutputGraph`:
the same probes (same generator), the same per-sample norms for every layer, tied
and untied embeddings, over successive probe rounds."""

from __future__ import annotations

import llm_models
import pytest
import torch

from sensitivity.gauss_newton import OutputGraph
from sensitivity.layers import discover_layers
from sensitivity.models.lm_loading import load_hf_causal_lm
from sensitivity.perturb import Perturbation, frozen
from sensitivity.streaming.gauss_newton import StreamedOutputGraph
from sensitivity.streaming.hidden import HiddenStates
from sensitivity.streaming.skeleton import StreamedCausalLM


def whole_and_streamed(tmp_path, build):
    folder = llm_models.save_folder(build(), tmp_path / "model", with_tokenizer=False)
    whole, _ = load_hf_causal_lm(folder)
    return llm_models.bundle(whole), StreamedCausalLM(folder)


@pytest.mark.parametrize("tied", [False, True])
def test_streamed_probe_norms_equal_the_whole_model(tied, tmp_path):
    bundle, lm = whole_and_streamed(tmp_path, lambda: llm_models.llama(tied=tied))
    names = [layer.name for layer in discover_layers(bundle) if layer.used]
    assert ("lm_head" in names) != tied
    idx = list(range(len(names)))
    pert = Perturbation(bundle, names)
    for batch in bundle.calibration:
        want_gen, got_gen = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        with frozen(bundle.model):
            graph = OutputGraph(pert, batch, idx)
            want = [graph.probe_norms(3, want_gen, idx) for _ in range(2)]  # two probe rounds
        streamed = StreamedOutputGraph(lm, batch, bundle.output_loss)
        got = [streamed.probe_norms(3, got_gen, names) for _ in range(2)]
        for w, g in zip(want, got):
            assert (w > 0).all()
            torch.testing.assert_close(g, w, rtol=1e-5, atol=0)
    assert all(p.is_meta for p in lm.blocks.parameters())


def test_streamed_probe_norms_of_some_layers_with_spilled_inputs(tmp_path):
    bundle, lm = whole_and_streamed(tmp_path, llm_models.qwen2)
    names = [layer.name for layer in discover_layers(bundle) if layer.used]
    some = [n for n in names if ".1." in n][:3]  # the top block only: the sweep stops there
    batch = bundle.calibration[0]
    pert = Perturbation(bundle, names)
    idx = [names.index(n) for n in some]
    with frozen(bundle.model):
        want = OutputGraph(pert, batch, idx).probe_norms(4, torch.Generator().manual_seed(2), idx)
    hidden = HiddenStates(budget=0)  # every block input on disk
    streamed = StreamedOutputGraph(lm, batch, bundle.output_loss, hidden=hidden, keep_blocks=True)
    assert hidden.spilled_bytes > 0 and hidden.resident_bytes == 0
    got = streamed.probe_norms(4, torch.Generator().manual_seed(2), some)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
