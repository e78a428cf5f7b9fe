"""Text for text-model families: tokenizing, batching, uploaded texts or token ids
checked against the model, and the tokenizer of an uploaded folder. Shared by every
family that reads token sequences."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from sensitivity.bundle import Batch
from sensitivity.data.formats import TOKENIZER_FILES
from sensitivity.data.uploaded import read_tensors, read_texts, split_rows
from sensitivity.sources import DataSource

MAX_TEXT_CALIBRATION = 64
MAX_TEXT_EVALUATION = 512


def tokenize(tokenizer, texts: Sequence[str], inputs: Sequence[str], max_tokens: int) -> Batch:
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_tokens,
                    return_tensors="pt")
    batch = {k: enc[k] for k in inputs if k in enc}
    batch.setdefault("attention_mask", torch.ones_like(batch["input_ids"]))
    if "token_type_ids" in inputs:
        batch.setdefault("token_type_ids", torch.zeros_like(batch["input_ids"]))
    return batch


def token_batch(ids: torch.Tensor, mask: torch.Tensor, inputs: Sequence[str]) -> Batch:
    batch = {"input_ids": ids.long(), "attention_mask": mask.long()}
    if "token_type_ids" in inputs:
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    return batch


def chunks(batch: Batch, size: int) -> list[Batch]:
    n = batch["input_ids"].shape[0]
    return [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, n, size)]


def uploaded_text_batches(data: DataSource, tokenizer, model, inputs: Sequence[str],
                          max_tokens: int, calibration_batch: int, eval_batch: int
                          ) -> tuple[list[Batch], list[Batch], str]:
    """(calibration batches, evaluation batches, what was used) from an uploaded
    dataset: texts tokenized, or token ids checked against the model. Even rows
    calibrate, odd rows evaluate."""
    if data.is_text:
        texts = read_texts(data)
        calib_rows, eval_rows = split_rows(len(texts), MAX_TEXT_CALIBRATION, MAX_TEXT_EVALUATION)
        calibration = chunks(tokenize(tokenizer, [texts[i] for i in calib_rows], inputs,
                                      max_tokens), calibration_batch)
        evaluation = chunks(tokenize(tokenizer, [texts[i] for i in eval_rows], inputs,
                                     max_tokens), eval_batch)
        what = "texts"
    else:
        ids, mask = token_ids(read_tensors(data), data.name, model)
        calib_rows, eval_rows = split_rows(ids.shape[0], MAX_TEXT_CALIBRATION,
                                           MAX_TEXT_EVALUATION)
        calibration = chunks(token_batch(ids[calib_rows], mask[calib_rows], inputs),
                             calibration_batch)
        evaluation = chunks(token_batch(ids[eval_rows], mask[eval_rows], inputs), eval_batch)
        what = "token sequences"
    return calibration, evaluation, f"uploaded dataset {data.name!r}: {len(calib_rows)} {what} (even rows)"


def token_ids(tensors: dict[str, torch.Tensor], dataset: str, model) -> tuple[torch.Tensor,
                                                                              torch.Tensor]:
    """(input ids, attention mask) of a token dataset, checked against the model."""
    ids = tensors["inputs"]
    where = f"dataset {dataset!r}"
    if ids.is_floating_point() or ids.dtype == torch.bool or ids.dim() != 2:
        raise ValueError(f"{where}: a text model takes token ids: `inputs` must be an integer "
                         f"tensor of shape (n, sequence length), got {ids.dtype} of shape "
                         f"{list(ids.shape)}")
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if int(ids.min()) < 0 or (vocab and int(ids.max()) >= vocab):
        raise ValueError(f"{where}: token ids must lie in [0, {vocab}) (the model's vocabulary), "
                         f"got {int(ids.min())}..{int(ids.max())}")
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and ids.shape[1] > positions:
        raise ValueError(f"{where}: sequences of {ids.shape[1]} tokens are longer than the "
                         f"model's {positions} positions")
    mask = tensors.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    elif mask.shape != ids.shape or not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{where}: `attention_mask` must be 0/1 with the shape of `inputs` "
                         f"{list(ids.shape)}, got shape {list(mask.shape)}")
    if not bool((mask.sum(1) > 0).all()):
        raise ValueError(f"{where}: every sequence needs at least one unmasked token")
    return ids, mask


def folder_tokenizer(name: str, folder: Path, load):
    """The tokenizer of an uploaded folder through `load(folder)`, with a clear error
    when there is none or it cannot be read."""
    if not any((folder / f).exists() for f in TOKENIZER_FILES):
        raise ValueError(f"model {name!r}: the archive has no tokenizer (none of "
                         f"{', '.join(TOKENIZER_FILES)}); a text model needs its tokenizer to "
                         "read text, or upload token ids (`inputs`) as a safetensors dataset")
    try:
        return load(str(folder))
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"model {name!r}: the tokenizer in the archive cannot be loaded: "
                         f"{exc}") from None


def check_loading(name: str, loading: dict, ignore_missing: Sequence[str] = ()) -> None:
    """Weights transformers would initialise at random are a broken upload; keys
    starting with one of `ignore_missing` are parts the family does not use."""
    missing = sorted(k for k in loading.get("missing_keys") or ()
                     if not any(k.startswith(p) for p in ignore_missing))
    mismatched = [str(k) for k in loading.get("mismatched_keys") or ()]
    if missing or mismatched:
        parts = [f"missing keys ({len(missing)}): {', '.join(missing[:8])}"] if missing else []
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {', '.join(mismatched[:8])}")
        raise ValueError(f"model {name!r}: the safetensors weights do not fit config.json: "
                         + "; ".join(parts))
