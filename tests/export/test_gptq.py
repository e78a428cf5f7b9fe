"""GPTQ export, decoded by the published format rules (AutoGPTQ's unpacking: 32/b
values per int32 word lowest first for 2/4/8 bits, 32 values in three words for 3
bits; `gptq_v2` true zero points; g_idx = k // g), which must give back the
fake-quantized weights. No GPTQ loader runs on this CPU; vLLM loading is GPU-only."""

from __future__ import annotations

import json
import re

import pytest
import torch

from kernels.export.registry import write_export
from kernels.fake_quant import fake_quantize_model
from kernels.scheme import QuantConfig
from tests.export.test_compressed_tensors import linear_names, tiny_llama

THREE_BIT_WORDS = [  # AutoGPTQ's 3-bit layout: (word, shift) of each bit run of value j
    *[[(0, 3 * j)] for j in range(10)], [(0, 30), (1, -2)], *[[(1, 3 * (j - 11) + 1)] for j in range(11, 21)],
    [(1, 31), (2, -1)], *[[(2, 3 * (j - 22) + 2)] for j in range(22, 32)]]


def unpack_columns(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Values along dim 0 of an int32 (n·bits/32, cols) tensor, by AutoGPTQ's rules."""
    words = packed.to(torch.int64) & 0xFFFFFFFF
    mask = 2**bits - 1
    rows = []
    if bits in (2, 4, 8):
        per = 32 // bits
        for i in range(n):
            rows.append((words[i // per] >> (bits * (i % per))) & mask)
    else:
        assert bits == 3
        for i in range(n):
            block, j = 3 * (i // 32), i % 32
            value = torch.zeros_like(words[0])
            for word, shift in THREE_BIT_WORDS[j]:
                w = words[block + word]
                value |= (w >> shift) if shift >= 0 else (w << -shift)
            rows.append(value & mask)
    return torch.stack(rows)


def test_mixed_gptq_checkpoint_decodes_to_the_fake_quantized_weights(tmp_path):
    model = tiny_llama()
    widths = {"q_proj": 3, "k_proj": 3, "v_proj": 3, "o_proj": 4, "gate_proj": 2, "up_proj": 2,
              "down_proj": 8}
    configs = {n: QuantConfig(widths[n.rpartition(".")[2]], 32) for n in linear_names(model)
               if n != "lm_head"}
    write_export("gptq", model, configs, tmp_path, {"layers": {}})
    qc = json.loads((tmp_path / "quantize_config.json").read_text())
    assert qc["checkpoint_format"] == "gptq_v2" and qc["sym"] is False and qc["group_size"] == 32
    assert json.loads((tmp_path / "config.json").read_text())["quantization_config"] == qc
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "model.safetensors")
    reference = dict(fake_quantize_model(model, configs).named_modules())
    for name, cfg in configs.items():
        out_features, k = reference[name].weight.shape
        codes = unpack_columns(tensors[f"{name}.qweight"], cfg.bits, k)  # (K, out)
        zeros = unpack_columns(tensors[f"{name}.qzeros"].T, cfg.bits, out_features).T  # (K/g, out)
        g_idx = tensors[f"{name}.g_idx"].long()
        assert torch.equal(g_idx, torch.arange(k) // 32)
        scales = tensors[f"{name}.scales"].float()
        weight = ((codes - zeros[g_idx]) * scales[g_idx]).T
        torch.testing.assert_close(weight, reference[name].weight, rtol=0, atol=1e-6)
        bits = next((v["bits"] for r, v in qc["dynamic"].items() if re.match(r[2:], name)), qc["bits"])
        assert bits == cfg.bits, name
    fused = "model.layers.0.mlp.gate_up_proj"  # vLLM matches `dynamic` against fused modules
    assert any(re.match(r[2:], fused) for r in qc["dynamic"] if r.startswith("+:"))
    assert any(re.match(r[2:], "lm_head") for r in qc["dynamic"] if r.startswith("-:"))
    assert "lm_head.weight" in tensors and tensors["lm_head.weight"].dtype == torch.float16


def test_widths_vllm_does_not_serve_are_refused(tmp_path):
    model = tiny_llama()
    with pytest.raises(ValueError, match="vLLM's gptq serves 2, 3, 4, 8"):
        write_export("gptq", model, {"model.layers.0.mlp.down_proj": QuantConfig(5, 32)}, tmp_path, {})
