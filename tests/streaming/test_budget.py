import llm_models
import pytest

from sensitivity.streaming import budget
from sensitivity.streaming.budget import ENV, max_memory, parse_bytes, plan


def test_sizes_parse_in_decimal_and_binary_units(monkeypatch):
    assert parse_bytes("24GiB") == 24 * 2**30
    assert parse_bytes("8 GB") == 8 * 10**9
    assert parse_bytes("1.5e9") == 1_500_000_000
    assert parse_bytes("800mib") == 800 * 2**20
    with pytest.raises(ValueError, match=ENV):
        parse_bytes("lots")
    monkeypatch.delenv(ENV, raising=False)
    assert max_memory() is None
    monkeypatch.setenv(ENV, "2GiB")
    assert max_memory() == 2 * 2**30


def test_the_plan_streams_when_the_whole_model_would_not_fit(tmp_path, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=llm_models.VOCAB, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=16, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)  # deep enough that one block is a small part of it
    folder = llm_models.save_folder(model, tmp_path / "m", with_tokenizer=False)
    monkeypatch.setattr(budget, "BASELINE_BYTES", 0)
    fp32 = sum(p.numel() for p in model.parameters()) * 4
    free = plan(folder, budget=None)
    assert not free.stream and free.fp32_bytes == fp32 and free.hidden_budget is None
    roomy = plan(folder, budget=10 * fp32)
    assert not roomy.stream and roomy.hidden_budget == 10 * fp32 - roomy.whole_model_bytes
    assert free.streamed_bytes < free.whole_model_bytes
    between = (free.streamed_bytes + free.whole_model_bytes) // 2  # streamed fits, the whole does not
    tight = plan(folder, budget=between)
    assert tight.stream and tight.hidden_budget == between - tight.streamed_bytes
    assert "block streamed" in tight.describe()
    with pytest.raises(ValueError, match="even block streamed"):
        plan(folder, budget=free.streamed_bytes - 1)
