"""Block-streamed sequential GPTQ against `quantize_sequentially` on the whole model:
the same order, the same Hessians, the same codes."""

from __future__ import annotations

import llm_models
import pytest
import torch

from kernels.gptq import gptq_quantize
from kernels.layout import from_quantizer_view, quantizer_view
from kernels.scheme import QuantScheme
from sensitivity.layer_inputs import quantize_sequentially, quantizer_runs
from sensitivity.layers import discover_layers
from sensitivity.models.lm_loading import load_hf_causal_lm
from sensitivity.streaming.gptq import quantize_streamed
from sensitivity.streaming.hidden import HiddenStates
from sensitivity.streaming.skeleton import StreamedCausalLM


def quantizer(codes: dict, config):
    def quantize_layer(name, module, hessian):
        q = gptq_quantize(quantizer_view(module), hessian, config, name=name)
        codes[name] = (q, hessian.xtx.clone())
        module.weight.copy_(from_quantizer_view(module, q.dequantize(module.weight.dtype)))
    return quantize_layer


@pytest.mark.parametrize("build", [lambda: llm_models.llama(tied=False), llm_models.qwen2])
def test_streamed_gptq_equals_the_whole_model_pass(build, tmp_path):
    folder = llm_models.save_folder(build(), tmp_path / "model", with_tokenizer=False)
    whole, _ = load_hf_causal_lm(folder)
    bundle = llm_models.bundle(whole, calibration=llm_models.token_batches(6, 16, 3, seed=4, pad_last=2))
    names = [layer.name for layer in discover_layers(bundle) if layer.used and layer.kind != "embedding"]
    assert "lm_head" in names
    config = QuantScheme(group_size=16).config(3)
    want: dict = {}
    modules = dict(whole.named_modules())
    order = quantize_sequentially(whole, names, quantizer_runs(bundle),
                                  lambda n, h: quantizer(want, config)(n, modules[n], h))
    lm = StreamedCausalLM(folder)
    got: dict = {}
    written: list[int] = []
    streamed_order = quantize_streamed(lm, bundle.quantizer_batches, names, quantizer(got, config),
                                       on_block=lambda i, block: written.append(i),
                                       hidden=HiddenStates(budget=0))
    assert streamed_order == order and written == list(range(len(lm)))
    for name in names:
        (qw, hw), (qg, hg) = want[name], got[name]
        torch.testing.assert_close(hg, hw, rtol=1e-6, atol=1e-6)
        assert torch.equal(qg.codes, qw.codes), name
        torch.testing.assert_close(qg.scales, qw.scales)
        assert torch.equal(qg.zeros, qw.zeros)
    assert all(p.is_meta for p in lm.blocks.parameters())
