"""Reading uploaded calibration files (the service checked their format at
upload; here they are read for a model): safetensors tensors `inputs` (optional
`labels`, `attention_mask`) read with safetensors only, or texts from .txt lines
or JSON lines (a string, or an object with `text` and an optional `label`)."""

from __future__ import annotations

import json

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from sensitivity.data.formats import TENSOR_NAMES
from sensitivity.sources import DataSource


def read_tensors(source: DataSource) -> dict[str, torch.Tensor]:
    """The dataset's tensors, with `labels` and `attention_mask` rows matching `inputs`."""
    if source.format != "safetensors":
        raise ValueError(f"dataset {source.name!r} is {source.format} text; this model takes "
                         "tensors: upload a .safetensors file with `inputs` (and optional "
                         "`labels`)")
    try:
        tensors = load_file(str(source.path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"dataset {source.name!r}: cannot read the safetensors file: {exc}") \
            from None
    unknown = sorted(set(tensors) - set(TENSOR_NAMES))
    if unknown or "inputs" not in tensors:
        raise ValueError(f"dataset {source.name!r}: expected tensors `inputs` (required), "
                         f"`labels`, `attention_mask`; got {', '.join(sorted(tensors))}")
    n = tensors["inputs"].shape[0] if tensors["inputs"].dim() else 0
    if n == 0:
        raise ValueError(f"dataset {source.name!r}: `inputs` has no samples")
    for name in ("labels", "attention_mask"):
        t = tensors.get(name)
        if t is not None and (t.dim() == 0 or t.shape[0] != n):
            raise ValueError(f"dataset {source.name!r}: `{name}` has shape {list(t.shape)}, "
                             f"but `inputs` has {n} samples")
    return tensors


def read_texts(source: DataSource) -> list[str]:
    """The dataset's texts in file order, blank lines skipped (labels are not used:
    text models calibrate by self-distillation)."""
    if not source.is_text:
        raise ValueError(f"dataset {source.name!r} holds tensors; a text model takes a .txt "
                         "or .jsonl file of texts, or token ids (`inputs`) in safetensors")
    texts = []
    with open(source.path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if source.format == "jsonl":
                item = json.loads(line)
                text = item if isinstance(item, str) else item.get("text") \
                    if isinstance(item, dict) else None
                if not isinstance(text, str):
                    raise ValueError(f"dataset {source.name!r} line {number}: expected a "
                                     "string or an object with `text`")
                line = text
            texts.append(line)
    if not texts:
        raise ValueError(f"dataset {source.name!r} holds no text")
    return texts


def split_rows(n: int, max_calibration: int, max_evaluation: int) -> tuple[list[int], list[int]]:
    """Calibration rows (even positions) and held-out evaluation rows (odd ones),
    each capped; a single sample serves both."""
    calibration = list(range(0, n, 2))[:max_calibration]
    evaluation = list(range(1, n, 2))[:max_evaluation] or calibration
    return calibration, evaluation
