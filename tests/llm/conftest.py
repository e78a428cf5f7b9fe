"""The real built-in LLM, loaded once per session (dequantized from its GGUF file on
the first load, read from the converted copy in the test cache afterwards)."""

import pytest


@pytest.fixture(scope="session")
def smollm2():
    from sensitivity.models import smollm2 as builtin
    from sensitivity.models.lm_loading import load_gguf

    model, tokenizer, facts = load_gguf(builtin.gguf_path(), "smollm2-135m")
    return model, tokenizer, facts
