"""Block-streamed fisher against the whole-model Gauss–Newton loop: the same samples
per round over several calibration batches (same generator, same shares), the same
‖ΔW‖² and so the same Ω."""

from __future__ import annotations

import llm_models
import torch

from kernels.scheme import QuantScheme
from sensitivity.gauss_newton import OutputGraph
from sensitivity.layers import discover_layers
from sensitivity.models.lm_loading import load_hf_causal_lm
from sensitivity.omega import second_order_omega
from sensitivity.perturb import Perturbation, frozen
from sensitivity.quantized import QuantizedWeights
from sensitivity.streaming.fisher import (
    layer_sizes,
    streamed_errors,
    streamed_fisher_omega,
    streamed_fisher_traces,
)
from sensitivity.streaming.skeleton import StreamedCausalLM

CHOICES = [(2, 16), (4, 16), (16, 16)]


def test_streamed_fisher_table_equals_the_whole_model(tmp_path):
    folder = llm_models.save_folder(llm_models.llama(tied=True), tmp_path / "model", with_tokenizer=False)
    whole, _ = load_hf_causal_lm(folder)
    calibration = llm_models.token_batches(5, 12, 2, seed=1, pad_last=3)  # batches of 2, 2, 1
    bundle = llm_models.bundle(whole, calibration=calibration)
    layers = [layer for layer in discover_layers(bundle) if layer.used]
    names = [layer.name for layer in layers]
    idx = list(range(len(names)))
    # the whole-model gn loop: two rounds of 3 probes, a fresh graph per batch per round
    gen = torch.Generator().manual_seed(11)
    pert = Perturbation(bundle, names)
    samples = []
    with frozen(whole):
        for _ in range(2):
            s = torch.zeros(3, len(names), dtype=torch.float64)
            for b in bundle.calibration:
                s += bundle.batch_size(b) / 5 * OutputGraph(pert, b, idx).probe_norms(3, gen, idx, keep=False)
            samples.append(s)
    want_mean = torch.cat(samples).mean(0)
    lm = StreamedCausalLM(folder)
    traces = streamed_fisher_traces(lm, bundle.calibration, bundle.output_loss, names, probes=6, block=3,
                                    seed=11, hidden_budget=0)
    got_mean = torch.tensor([traces.stats[n].mean for n in names], dtype=torch.float64)
    torch.testing.assert_close(got_mean, want_mean, rtol=1e-5, atol=0)
    assert all(traces.stats[n].n == 6 for n in names) and traces.backward_passes == 2 * 3 * 3
    scheme = QuantScheme(group_size=16)
    errors = streamed_errors(lm, names, scheme, CHOICES)
    assert errors == QuantizedWeights(bundle, scheme).errors(names, CHOICES)
    sizes = layer_sizes(lm, names)
    assert sizes == {layer.name: layer.params for layer in layers}
    want = second_order_omega({n: float(want_mean[c]) / sizes[n] for c, n in enumerate(names)}, errors)
    got = streamed_fisher_omega(traces, errors, sizes)
    for n in names:
        for c in CHOICES:
            assert abs(got[n][c] - want[n][c]) <= 1e-5 * abs(want[n][c]), (n, c)

