"""The `text-encoder` family: Hugging Face text encoders as sentence-embedding
models — the built-in `minilm`, its architecture with uploaded weights, and any
uploaded encoder folder (the family of last resort for Hugging Face folders).

Embedding = attention-masked mean of the last hidden state, L2-normalised; loss =
self-distillation MSE against the full-precision embeddings (zero residual, so
`fisher` measures the Gauss–Newton matrix); quality = cosine similarity to the
full-precision embeddings on held-out texts (and paraphrase recall@1 when they are
the built-in paraphrase corpus). Calibration and evaluation text: the uploaded
texts or token ids (even rows calibrate, odd rows evaluate), otherwise the corpus.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Sequence
from importlib import import_module

import torch
import torch.nn.functional as F
from torch import nn

from sensitivity.bundle import Batch, ModelBundle
from sensitivity.catalog import FAMILIES
from sensitivity.data.corpus import load_corpus
from sensitivity.models.family import ModelRequest
from sensitivity.models.hf import load_hf_encoder, load_hf_tokenizer, load_hf_upload
from sensitivity.models.text_data import (
    MAX_TEXT_EVALUATION,
    check_loading,
    chunks,
    folder_tokenizer,
    tokenize,
    uploaded_text_batches,
)
from sensitivity.models.weights import load_strict, read_state_dict
from sensitivity.output_loss import SquaredErrorOutput

MAX_TOKENS = 64
CALIBRATION_BATCH = 16
EVAL_BATCH = 64
CORPUS_CALIBRATION_EVERY = 20  # every 20th corpus sentence calibrates: 16 of 320, one batch
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EMBEDDING_RECIPE = "mean-pooled L2-normalised last hidden state, v1"
DISTILLATION = "self-distillation MSE to the full-precision embeddings"
FAMILY = FAMILIES["text-encoder"]


def claims(config: dict) -> bool:
    """Any Hugging Face folder the more specific families left: `model_inputs`
    then refuses what is not a text encoder, with the reason."""
    return True


def load(request: ModelRequest) -> ModelBundle:
    if request.builtin is None:
        return _folder(request)
    return _builtin(request)


def _builtin(request: ModelRequest) -> ModelBundle:
    """`minilm` as shipped, or its architecture with uploaded weights or texts."""
    name = request.name
    model, tokenizer = load_hf_encoder(str(import_module(request.builtin.module).model_dir()))
    if request.source is not None:
        label = f"model {name!r} ({request.builtin.name})"
        load_strict(model, read_state_dict(request.source.path, label), label)
    inputs = model_inputs(model)
    corpus = corpus_batches(tokenizer, inputs, MAX_TOKENS)
    calibration, note = corpus["calibration"], corpus["note"]
    if request.data is not None:
        calibration, _, note = uploaded_text_batches(request.data, tokenizer, model, inputs,
                                                     MAX_TOKENS, CALIBRATION_BATCH, EVAL_BATCH)
        note += f", {DISTILLATION} (labels, if any, unused)"
    description = ("all-MiniLM-L6-v2 sentence encoder, self-distillation loss" if not request.uploaded
                   else "minilm architecture (all-MiniLM-L6-v2), sentence embeddings, "
                        "self-distillation loss")
    info = {"source": request.source_note(), "calibration": note,
            "evaluation": corpus["evaluation_note"]}
    if request.uploaded:
        info["embedding"] = EMBEDDING_RECIPE
    return text_encoder_bundle(name, model, calibration, corpus["evaluation"],
                               partner=corpus["partner"], description=description, info=info,
                               tokenizer=tokenizer)


def _folder(request: ModelRequest) -> ModelBundle:
    name, source, data = request.name, request.source, request.data
    folder = source.path
    config_bytes = (folder / "config.json").read_bytes()
    try:
        model, loading = load_hf_upload(str(folder))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"model {name!r}: transformers could not build the uploaded "
                         f"{source.architecture} model: {exc}") from None
    check_loading(name, loading, ignore_missing=("pooler.",))  # the mean pool does not use it
    inputs = model_inputs(model)
    max_tokens = min(MAX_TOKENS, int(getattr(model.config, "max_position_embeddings", None)
                                     or MAX_TOKENS))
    tokenizer = None
    if data is None or data.is_text:
        tokenizer = folder_tokenizer(name, folder, load_hf_tokenizer)
    partner = None
    if data is None:
        corpus = corpus_batches(tokenizer, inputs, max_tokens)
        calibration, evaluation = corpus["calibration"], corpus["evaluation"]
        note, partner, eval_note = corpus["note"], corpus["partner"], corpus["evaluation_note"]
    else:
        calibration, evaluation, note = uploaded_text_batches(
            data, tokenizer, model, inputs, max_tokens, CALIBRATION_BATCH, EVAL_BATCH)
        note += f", {DISTILLATION} (labels, if any, unused)"
        eval_note = (f"cosine_to_fp: mean cosine similarity (%) of the quantized model's "
                     f"sentence embeddings to the full-precision ones on the held-out half of "
                     f"dataset {data.name!r} (odd rows, at most {MAX_TEXT_EVALUATION})")
    salt = hashlib.sha256(config_bytes + EMBEDDING_RECIPE.encode()
                          + f"|max_tokens={max_tokens}".encode()).hexdigest()
    return text_encoder_bundle(
        name, model, calibration, evaluation, partner=partner, cache_salt=salt, tokenizer=tokenizer,
        description=f"uploaded Hugging Face {source.architecture} model ({type(model).__name__}), "
                    "sentence embeddings, self-distillation loss",
        info={"source": request.source_note(), "calibration": note, "evaluation": eval_note,
              "embedding": EMBEDDING_RECIPE, "model_type": source.architecture,
              "model_class": type(model).__name__,
              "ignored_checkpoint_keys": len(loading.get("unexpected_keys") or ())})


def model_inputs(model: nn.Module) -> tuple[str, ...]:
    """Which of input_ids / attention_mask / token_type_ids the model's forward takes."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise ValueError(f"{type(model).__name__} is an encoder-decoder model; bitalloc "
                         "calibrates text encoders (BERT-like) and decoders by their last "
                         "hidden state: upload the encoder on its own")
    params = inspect.signature(model.forward).parameters
    names = tuple(k for k in MODEL_INPUTS if k in params)
    if "input_ids" not in names or "attention_mask" not in names:
        raise ValueError(f"{type(model).__name__}.forward takes no input_ids and "
                         "attention_mask: uploaded Hugging Face models must be text models")
    return names


def embed(model: nn.Module, batch: Batch) -> torch.Tensor:
    out = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:
        raise ValueError(f"{type(model).__name__} returns no last_hidden_state")
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return F.normalize(pooled, dim=-1)


def paraphrase_recall_at_1(emb: torch.Tensor, partner: list[int]) -> float:
    """Share of sentences whose nearest other sentence is their paraphrase (%)."""
    sim = emb @ emb.T
    sim.fill_diagonal_(-float("inf"))
    return float((sim.argmax(1) == torch.tensor(partner)).float().mean()) * 100


def corpus_batches(tokenizer, inputs: Sequence[str], max_tokens: int) -> dict:
    """The built-in paraphrase corpus: every 20th sentence calibrates, all evaluate."""
    corpus = load_corpus()
    sentences = corpus.sentences
    calib = sentences[::CORPUS_CALIBRATION_EVERY]
    return {
        "calibration": chunks(tokenize(tokenizer, calib, inputs, max_tokens), CALIBRATION_BATCH),
        "evaluation": [tokenize(tokenizer, sentences[i:i + EVAL_BATCH], inputs, max_tokens)
                       for i in range(0, len(sentences), EVAL_BATCH)],
        "partner": corpus.partner,
        "note": f"built-in paraphrase corpus: {len(calib)} sentences, {DISTILLATION}",
        "evaluation_note": f"cosine_to_fp: mean cosine similarity (%) of the quantized model's "
                           f"sentence embeddings to the full-precision ones on the built-in "
                           f"paraphrase corpus ({len(sentences)} sentences); "
                           "paraphrase_recall_at_1: share (%) whose nearest sentence is its "
                           "paraphrase",
    }


def text_encoder_bundle(name: str, model: nn.Module, calibration: Sequence[Batch],
                        evaluation: Sequence[Batch], *, description: str,
                        partner: list[int] | None = None, info: dict | None = None,
                        cache_salt: str = "", tokenizer=None) -> ModelBundle:
    """`calibration` and `evaluation`: token batches (input_ids, attention_mask, and
    token_type_ids where the model takes them); `partner[i]`: the paraphrase of
    evaluation sample i, when the evaluation texts come in paraphrase pairs."""
    model.eval()
    try:
        with torch.no_grad():
            reference = torch.cat([embed(model, b) for b in evaluation])
            calibration = [{**b, "target": embed(model, b)} for b in calibration]
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:  # the user's model
        raise ValueError(f"model {name!r} fails on its calibration data: "
                         f"{type(exc).__name__}: {exc}") from None

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            emb = torch.cat([embed(m, b) for b in evaluation])
        cosine = (emb * reference).sum(-1)
        quality = {"cosine_to_fp": float(cosine.mean()) * 100,
                   "worst_cosine_to_fp": float(cosine.min()) * 100}
        if partner is not None:
            quality["paraphrase_recall_at_1"] = paraphrase_recall_at_1(emb, partner)
        return quality

    output_loss = SquaredErrorOutput(target_key="target")  # zero residual: target = FP embedding
    facts = {"eval_samples": int(reference.shape[0]),
             "calibration_samples": sum(int(b["input_ids"].shape[0]) for b in calibration)}
    if partner is not None:
        facts["fp_paraphrase_recall_at_1"] = paraphrase_recall_at_1(reference, partner)
    return ModelBundle(
        name=name,
        model=model,
        calibration=calibration,
        forward=embed,
        loss=lambda m, b: output_loss(embed(m, b), b),
        output_loss=output_loss,
        evaluate=evaluate,
        metrics=FAMILY.metrics,
        description=description,
        info={**facts, **(info or {})},
        cache_salt=cache_salt,
        tokenizer=tokenizer,
    )
