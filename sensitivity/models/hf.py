"""Loading Hugging Face transformer models for second-order work."""

import os

# Our top-level package `kernels` shares its name with the Hugging Face `kernels`
# package; transformers would otherwise find it and may try to load hub kernels.
os.environ.setdefault("USE_HUB_KERNELS", "NO")

from transformers import AutoModel, AutoTokenizer  # noqa: E402


def load_hf_encoder(model_dir: str):
    """(model, tokenizer) in eval mode with eager attention: flash and SDPA
    attention have no double backward, which Hessian-vector products need."""
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model.float().eval(), tokenizer
