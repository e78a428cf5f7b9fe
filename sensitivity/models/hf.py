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


def load_hf_upload(model_dir: str):
    """(model, loading info) of an uploaded model folder: safetensors weights only
    (pickled weights are never loaded), no remote code, eager attention, fp32, eval
    mode. The loading info lists missing, unexpected and mismatched keys."""
    model, info = AutoModel.from_pretrained(
        model_dir, attn_implementation="eager", use_safetensors=True, trust_remote_code=False,
        local_files_only=True, output_loading_info=True)
    return model.float().eval(), info


def load_hf_tokenizer(model_dir: str):
    """The tokenizer saved in an uploaded folder (no remote code), with a pad token."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False,
                                              local_files_only=True)
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ValueError("the tokenizer has no pad, end-of-sequence or unknown token to pad "
                             "batches with")
        tokenizer.pad_token = fallback
    return tokenizer
