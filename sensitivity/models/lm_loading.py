"""Loading causal language models: Hugging Face folders and GGUF files.

A folder loads with `AutoModelForCausalLM` (safetensors only, no remote code, eager
attention — flash and SDPA kernels have no double backward — fp32, eval mode).
A GGUF file loads through transformers' GGUF support (packages `gguf` and
`accelerate`), its tensors dequantized to fp32: reading and dequantizing takes tens
of seconds, so the result (config, fp32 safetensors, tokenizer) is kept under
`sensitivity.paths.cache_dir("gguf")`, keyed by the file's SHA-256 and the
transformers version, and later loads read that folder (well under a second).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch

from sensitivity.data.formats import GGUF_MAGIC
from sensitivity.models.hf import load_hf_tokenizer
from sensitivity.paths import cache_dir

_LOAD = {"attn_implementation": "eager", "trust_remote_code": False, "local_files_only": True,
         "dtype": torch.float32}


def _transformers():
    """transformers, imported after `sensitivity.models.hf` has set USE_HUB_KERNELS=NO
    (our package `kernels` would otherwise pass for the Hugging Face one)."""
    import transformers

    return transformers


def load_hf_causal_lm(model_dir: str | os.PathLike):
    """(model, loading info) of a causal-LM folder; the info lists missing, unexpected
    and mismatched keys."""
    model, info = _transformers().AutoModelForCausalLM.from_pretrained(
        str(model_dir), use_safetensors=True, output_loading_info=True, **_LOAD)
    return model.float().eval(), info


def check_gguf(path: Path, label: str) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ValueError(f"{label}: cannot read the GGUF file: {exc}") from None
    if magic != GGUF_MAGIC:
        raise ValueError(f"{label}: {path.name} is not a GGUF file (it does not start with "
                         f"{GGUF_MAGIC!r})")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_gguf(path: Path, label: str) -> tuple[torch.nn.Module, object, dict[str, str]]:
    """(model, tokenizer, facts) of a GGUF causal LM, dequantized to fp32; the facts say
    where it came from and whether the converted copy was reused."""
    folder, facts = gguf_folder(path, label)
    model, _ = load_hf_causal_lm(folder)
    return model, load_hf_tokenizer(str(folder)), facts


def gguf_folder(path: Path, label: str) -> tuple[Path, dict[str, str]]:
    """(the cached fp32 Hugging Face folder of a GGUF file, facts): converted on first use."""
    check_gguf(path, label)
    digest = file_digest(path)
    folder = cache_dir("gguf") / f"{digest[:32]}-transformers-{_transformers().__version__}"
    reused = (folder / "config.json").is_file()
    if not reused:
        _convert(path, folder, label)
    return folder, {"gguf_sha256": digest,
                    "gguf_conversion": "reused the cached fp32 conversion" if reused
                    else "dequantized to fp32 and cached"}


def _convert(path: Path, folder: Path, label: str) -> None:
    """Dequantize the GGUF into a Hugging Face folder at `folder`, written whole into a
    temporary folder first, so a reader never sees half of one."""
    transformers = _transformers()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, **_LOAD)
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(path.parent), gguf_file=path.name, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, NotImplementedError) as exc:
        raise ValueError(f"{label}: transformers cannot load this GGUF file as a causal language "
                         f"model: {type(exc).__name__}: {exc}") from None
    # the weights are now plain fp32: drop the marks of a quantized checkpoint
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process cached it first
        shutil.rmtree(tmp, ignore_errors=True)
