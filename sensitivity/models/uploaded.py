"""Bundles for models and calibration data users upload (DESIGN §7).

- A built-in architecture (`digits-cnn`, `digits-vit`, `minilm`) with a
  safetensors state dict: the built-in model with those weights, loaded strictly.
  Calibration: an uploaded safetensors dataset if given (with labels the task
  loss, without a self-distillation loss against the model's own full-precision
  outputs), otherwise the built-in calibration data. Evaluation: the built-in
  held-out evaluation.
- A Hugging Face model folder (config.json, safetensors weights, tokenizer) for
  an architecture transformers builds: a sentence-embedding bundle
  (`sensitivity.models.text_encoder`): self-distillation against the
  full-precision embeddings, quality = cosine similarity to them. Calibration and
  evaluation text: the uploaded texts (or token ids) if given, split into
  calibration and held-out evaluation halves, otherwise the built-in corpus.

Data is checked against the model before anything runs: a wrong shape, dtype or
token id raises ValueError with the reason, which fails the job with it.
"""

from __future__ import annotations

import hashlib
import json
from importlib import import_module
from pathlib import Path

import torch

from sensitivity.bundle import Batch, ModelBundle
from sensitivity.data.digits import load_digits_split
from sensitivity.data.uploaded import read_tensors, read_texts, split_rows
from sensitivity.models import BUILTIN_MODELS, load_model
from sensitivity.models.weights import WeightsMismatch, load_strict, read_state_dict
from sensitivity.output_loss import CrossEntropyOutput
from sensitivity.sources import DataSource, ModelSource

DIGITS = ("digits-cnn", "digits-vit")
DIGITS_BATCH = 256
MAX_DIGITS_SAMPLES = 1024
MAX_TEXT_CALIBRATION = 64
MAX_TEXT_EVALUATION = 512
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
EMBEDDING_RECIPE = "mean-pooled L2-normalised last hidden state, v1"


def load_bundle(name: str, model: ModelSource | None = None,
                data: DataSource | None = None) -> ModelBundle:
    """The bundle a job runs on: `name` is the built-in model or the uploaded
    model's name; `model` and `data` are the uploads, when there are any."""
    if model is None and data is None:
        return load_model(name)
    if model is None:
        return _builtin(name, name, None, data)
    if model.kind == "state_dict":
        return _builtin(name, model.architecture, model, data)
    return _hf(name, model, data)


# --- built-in architectures ------------------------------------------------------


def _builtin(name: str, architecture: str, model: ModelSource | None,
             data: DataSource | None) -> ModelBundle:
    if architecture not in BUILTIN_MODELS:
        raise ValueError(f"unknown architecture {architecture!r}; built-in architectures: "
                         f"{', '.join(BUILTIN_MODELS)}")
    weights = None
    if model is not None:
        weights = read_state_dict(model.path, f"model {name!r} ({architecture})")
    if architecture in DIGITS:
        bundle = _digits(name, architecture, weights, data)
    else:
        bundle = _minilm(name, weights, data)
    bundle.name = name
    bundle.info["source"] = (f"uploaded weights on the built-in {architecture} architecture"
                             if model is not None else f"built-in {architecture}")
    return bundle


def _digits(name: str, architecture: str, weights, data: DataSource | None) -> ModelBundle:
    calibration, note = None, "built-in: 256 training images with labels (task loss)"
    if data is not None:
        calibration, note = digits_calibration(read_tensors(data), data.name, architecture)
    try:
        bundle = import_module(BUILTIN_MODELS[architecture][0]).load(
            weights=weights, calibration=calibration)
    except WeightsMismatch as exc:  # it names the keys; say whose weights they are
        reason = str(exc).removeprefix(f"{architecture}: ")
        raise WeightsMismatch(f"model {name!r} ({architecture}): {reason}") from None
    test_images = len(load_digits_split().y_test)
    bundle.info.update(
        calibration=note,
        evaluation=f"accuracy: top-1 accuracy (%) on the built-in held-out scikit-learn digits "
                   f"test split ({test_images} images); test_loss: its cross-entropy")
    labelled = isinstance(bundle.output_loss, CrossEntropyOutput)
    loss = "task loss (labels)" if labelled else "self-distillation KL to FP logits"
    bundle.description = f"{architecture} architecture on 8x8 digits, {loss}"
    return bundle


def digits_calibration(tensors: dict[str, torch.Tensor], dataset: str,
                       architecture: str) -> tuple[list[Batch], str]:
    """Batches {x (n, 1, 8, 8) float32[, y (n,) int64]} of a dataset for a digits
    model, and a note saying what was used."""
    x = tensors["inputs"]
    where = f"dataset {dataset!r} for {architecture}"
    if "attention_mask" in tensors:
        raise ValueError(f"{where}: `attention_mask` is for token inputs; {architecture} "
                         "takes images")
    if not x.is_floating_point():
        raise ValueError(f"{where}: `inputs` must be floating-point images (values in [0, 1]), "
                         f"got {x.dtype}")
    n = x.shape[0]
    if tuple(x.shape[1:]) not in ((1, 8, 8), (8, 8), (64,)):
        raise ValueError(f"{where}: `inputs` has shape {list(x.shape)}, but {architecture} "
                         "takes 8x8 grey images: (n, 1, 8, 8), (n, 8, 8) or (n, 64)")
    x = x.reshape(n, 1, 8, 8).float()
    y = tensors.get("labels")
    if y is not None:
        if y.is_floating_point() or y.dtype == torch.bool or y.dim() != 1:
            raise ValueError(f"{where}: `labels` must be integer class ids of shape ({n},), got "
                             f"{y.dtype} of shape {list(y.shape)}")
        if int(y.min()) < 0 or int(y.max()) >= 10:
            raise ValueError(f"{where}: `labels` must be class ids 0-9, got values "
                             f"{int(y.min())}..{int(y.max())}")
        y = y.long()
    used = min(n, MAX_DIGITS_SAMPLES)
    batches = []
    for i in range(0, used, DIGITS_BATCH):
        batch = {"x": x[i:i + DIGITS_BATCH]}
        if y is not None:
            batch["y"] = y[i:i + DIGITS_BATCH]
        batches.append(batch)
    loss = "labels: task loss" if y is not None else "no labels: self-distillation KL to FP logits"
    capped = f" (first {used} of {n})" if used < n else ""
    return batches, f"uploaded dataset {dataset!r}: {used} images{capped}, {loss}"


def _minilm(name: str, weights, data: DataSource | None) -> ModelBundle:
    from sensitivity.models import minilm
    from sensitivity.models.hf import load_hf_encoder
    from sensitivity.models.text_encoder import MAX_TOKENS, corpus_batches, model_inputs

    model, tokenizer = load_hf_encoder(str(minilm.model_dir()))
    if weights is not None:
        load_strict(model, weights, f"model {name!r} (minilm)")
    inputs = model_inputs(model)
    corpus = corpus_batches(tokenizer, inputs, MAX_TOKENS)
    calibration, note = corpus["calibration"], corpus["note"]
    if data is not None:
        calibration, _, note = _text_data(data, tokenizer, model, inputs, MAX_TOKENS)
    return _text_bundle(name, model, calibration, corpus["evaluation"], note,
                        "minilm architecture (all-MiniLM-L6-v2)", partner=corpus["partner"],
                        evaluation_note=corpus["evaluation_note"])


# --- Hugging Face model folders ---------------------------------------------------


def _hf(name: str, source: ModelSource, data: DataSource | None) -> ModelBundle:
    from sensitivity.models.hf import load_hf_tokenizer, load_hf_upload
    from sensitivity.models.text_encoder import MAX_TOKENS, corpus_batches, model_inputs

    folder = source.path
    config_bytes = (folder / "config.json").read_bytes()
    try:
        model, loading = load_hf_upload(str(folder))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"model {name!r}: transformers could not build the uploaded "
                         f"{source.architecture} model: {exc}") from None
    _check_loading(name, loading)
    inputs = model_inputs(model)
    max_tokens = min(MAX_TOKENS, int(getattr(model.config, "max_position_embeddings", None)
                                     or MAX_TOKENS))
    tokenizer = None
    if data is None or data.is_text:
        tokenizer = _tokenizer(name, folder, load_hf_tokenizer)
    partner = None
    if data is None:
        corpus = corpus_batches(tokenizer, inputs, max_tokens)
        calibration, evaluation = corpus["calibration"], corpus["evaluation"]
        note, partner, eval_note = corpus["note"], corpus["partner"], corpus["evaluation_note"]
    else:
        calibration, evaluation, note = _text_data(data, tokenizer, model, inputs, max_tokens)
        eval_note = (f"cosine_to_fp: mean cosine similarity (%) of the quantized model's "
                     f"sentence embeddings to the full-precision ones on the held-out half of "
                     f"dataset {data.name!r} (odd rows, at most {MAX_TEXT_EVALUATION})")
    salt = hashlib.sha256(config_bytes + EMBEDDING_RECIPE.encode()
                          + f"|max_tokens={max_tokens}".encode()).hexdigest()
    bundle = _text_bundle(name, model, calibration, evaluation, note,
                          f"uploaded Hugging Face {source.architecture} model "
                          f"({type(model).__name__})", partner=partner,
                          evaluation_note=eval_note, cache_salt=salt)
    bundle.info.update(source="uploaded Hugging Face model folder",
                       model_type=source.architecture, model_class=type(model).__name__,
                       ignored_checkpoint_keys=len(loading.get("unexpected_keys") or ()))
    return bundle


def _check_loading(name: str, loading: dict) -> None:
    """Weights transformers would initialise at random are a broken upload (the
    pooler aside: the mean-pooled embedding does not use it)."""
    missing = sorted(k for k in loading.get("missing_keys") or () if not k.startswith("pooler."))
    mismatched = [str(k) for k in loading.get("mismatched_keys") or ()]
    if missing or mismatched:
        parts = [f"missing keys ({len(missing)}): {', '.join(missing[:8])}"] if missing else []
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {', '.join(mismatched[:8])}")
        raise ValueError(f"model {name!r}: the safetensors weights do not fit config.json: "
                         + "; ".join(parts))


def _tokenizer(name: str, folder: Path, load):
    if not any((folder / f).exists() for f in TOKENIZER_FILES):
        raise ValueError(f"model {name!r}: the archive has no tokenizer (none of "
                         f"{', '.join(TOKENIZER_FILES)}); a text model needs its tokenizer to "
                         "read text, or upload token ids (`inputs`) as a safetensors dataset")
    try:
        return load(str(folder))
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"model {name!r}: the tokenizer in the archive cannot be loaded: "
                         f"{exc}") from None


# --- text data --------------------------------------------------------------------


def _text_data(data: DataSource, tokenizer, model, inputs, max_tokens: int):
    """(calibration batches, evaluation batches, note) from an uploaded dataset:
    texts tokenized, or token ids checked against the model."""
    from sensitivity.models.text_encoder import (
        CALIBRATION_BATCH,
        EVAL_BATCH,
        chunks,
        token_batch,
        tokenize,
    )

    if data.is_text:
        texts = read_texts(data)
        calib_rows, eval_rows = split_rows(len(texts), MAX_TEXT_CALIBRATION, MAX_TEXT_EVALUATION)
        calibration = chunks(tokenize(tokenizer, [texts[i] for i in calib_rows], inputs,
                                      max_tokens), CALIBRATION_BATCH)
        evaluation = chunks(tokenize(tokenizer, [texts[i] for i in eval_rows], inputs,
                                     max_tokens), EVAL_BATCH)
        what = "texts"
    else:
        ids, mask = token_ids(read_tensors(data), data.name, model)
        calib_rows, eval_rows = split_rows(ids.shape[0], MAX_TEXT_CALIBRATION,
                                           MAX_TEXT_EVALUATION)
        calibration = chunks(token_batch(ids[calib_rows], mask[calib_rows], inputs),
                             CALIBRATION_BATCH)
        evaluation = chunks(token_batch(ids[eval_rows], mask[eval_rows], inputs), EVAL_BATCH)
        what = "token sequences"
    note = (f"uploaded dataset {data.name!r}: {len(calib_rows)} {what} (even rows), "
            "self-distillation MSE to the full-precision embeddings (labels, if any, unused)")
    return calibration, evaluation, note


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


def _text_bundle(name: str, model, calibration: list[Batch], evaluation: list[Batch],
                 calibration_note: str, description: str, *, partner: list[int] | None,
                 evaluation_note: str, cache_salt: str = "") -> ModelBundle:
    from sensitivity.models.text_encoder import text_encoder_bundle

    return text_encoder_bundle(
        name, model, calibration, evaluation, partner=partner, cache_salt=cache_salt,
        description=f"{description}, sentence embeddings, self-distillation loss",
        info={"calibration": calibration_note, "evaluation": evaluation_note,
              "embedding": EMBEDDING_RECIPE})
