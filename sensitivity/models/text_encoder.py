"""Any Hugging Face encoder as a sentence-embedding bundle, the `minilm` recipe
made general: embedding = attention-masked mean of the last hidden state,
L2-normalised; loss = self-distillation MSE against the full-precision
embeddings (zero residual, so `fisher` measures the Gauss–Newton matrix);
quality = cosine similarity to the full-precision embeddings on held-out texts
(and paraphrase recall@1 when they are the built-in paraphrase corpus)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sensitivity.bundle import Batch, ModelBundle
from sensitivity.data.corpus import load_corpus
from sensitivity.output_loss import SquaredErrorOutput

MAX_TOKENS = 64
CALIBRATION_BATCH = 16
EVAL_BATCH = 64
CORPUS_CALIBRATION_EVERY = 20  # every 20th corpus sentence calibrates: 16 of 320, one batch
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


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
        "note": f"built-in paraphrase corpus: {len(calib)} sentences, self-distillation MSE "
                "to the full-precision embeddings",
        "evaluation_note": f"cosine_to_fp: mean cosine similarity (%) of the quantized model's "
                           f"sentence embeddings to the full-precision ones on the built-in "
                           f"paraphrase corpus ({len(sentences)} sentences); "
                           "paraphrase_recall_at_1: share (%) whose nearest sentence is its "
                           "paraphrase",
    }


def text_encoder_bundle(name: str, model: nn.Module, calibration: Sequence[Batch],
                        evaluation: Sequence[Batch], *, description: str,
                        partner: list[int] | None = None, info: dict | None = None,
                        cache_salt: str = "") -> ModelBundle:
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
        output=embed,
        output_loss=output_loss,
        evaluate=evaluate,
        quality_metric="cosine_to_fp",
        description=description,
        info={**facts, **(info or {})},
        cache_salt=cache_salt,
    )
