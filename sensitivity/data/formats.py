"""What an uploaded model or calibration file may be, declared once and free of
torch: the service checks uploads against these names and the loaders read the
files by them, so the two never disagree."""

from __future__ import annotations

from typing import Literal, get_args

# an uploaded model: a Hugging Face folder, a built-in architecture's state dict, or a
# GGUF file (a causal language model, dequantized when loaded)
ModelKind = Literal["hf", "state_dict", "gguf"]
MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)
GGUF_SUFFIX = ".gguf"
GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file

# calibration files: their format by file suffix
DATA_SUFFIXES = {".safetensors": "safetensors", ".txt": "text", ".jsonl": "jsonl", ".ndjson": "jsonl"}
DataFormat = Literal["safetensors", "text", "jsonl"]
DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)
TEXT_FORMATS = ("text", "jsonl")

# the tensors a safetensors calibration file may hold: `inputs` (required), and
# `labels` and `attention_mask` with one row per input
TENSOR_NAMES = ("inputs", "labels", "attention_mask")

# any one of these makes a Hugging Face folder's tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
# files that complete a tokenizer but are none on their own
TOKENIZER_COMPANIONS = ("merges.txt", "special_tokens_map.json")


def data_format(filename: str) -> str | None:
    """The calibration format of a file by its suffix (case-insensitive); None if none."""
    lower = filename.lower()
    for suffix, fmt in DATA_SUFFIXES.items():
        if lower.endswith(suffix):
            return fmt
    return None
