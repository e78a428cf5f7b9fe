"""compressed-tensors export, read back by the real loader: transformers with the
`compressed-tensors` package decompresses it on the CPU, and its weights and logits
equal bitalloc's fake-quantized model's."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from kernels.export.bitstream import dense_pack
from kernels.export.registry import write_export
from kernels.fake_quant import fake_quantize_model
from kernels.scheme import QuantConfig

pytest.importorskip("compressed_tensors")


def tiny_llama(tied: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).eval()


def linear_names(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_dense_packing_matches_the_library(bits):
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    codes = torch.randint(0, 2**bits, (5, 77), generator=torch.Generator().manual_seed(bits))
    packed = dense_pack(codes, bits)
    assert packed.dtype == torch.int32 and packed.shape == (5, -(-77 * bits // 32))
    back = unpack_from_int32(packed, bits, torch.Size([5, 77])).to(torch.int64) + 2 ** (bits - 1)
    assert torch.equal(back, codes)


def test_mixed_widths_load_in_transformers_with_the_same_outputs(tmp_path):
    model = tiny_llama()
    widths = [2, 3, 4, 5, 6, 8, 16]
    configs = {n: QuantConfig(widths[i % len(widths)], 32, symmetric=True)
               for i, n in enumerate(linear_names(model))}
    write_export("compressed-tensors", model, configs, tmp_path, {"layers": {}})
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "pack-quantized" and {g["weights"]["num_bits"]
                                                 for g in qc["config_groups"].values()} == {2, 3, 4, 5, 6, 8}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    reference = fake_quantize_model(model, configs).half().float()
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the first forward decompresses the packed weights
        torch.testing.assert_close(loaded(ids).logits.float(), reference(ids).logits,
                                   rtol=1e-2, atol=2e-3)
    ours, theirs = dict(reference.named_modules()), dict(loaded.named_modules())
    for name in configs:
        torch.testing.assert_close(theirs[name].weight.float(), ours[name].weight, rtol=0, atol=0)


def test_what_the_format_cannot_hold_is_refused(tmp_path):
    model = tiny_llama(tied=True)
    with pytest.raises(ValueError, match="not a multiple of its group size"):
        write_export("compressed-tensors", model, {"model.layers.0.mlp.down_proj": QuantConfig(4, 96)},
                     tmp_path, {})
    with pytest.raises(ValueError, match="tied embeddings stay in 16 bits"):
        write_export("compressed-tensors", model, {"model.embed_tokens": QuantConfig(4, 32)},
                     tmp_path, {})
