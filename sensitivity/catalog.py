"""What bitalloc can load, declared without torch: the model families with their
quality metrics (headline first, each with its direction) and the built-in models
with their family. The family modules (`sensitivity.models.<family>`) own the
loading; the service, the dashboard and the CLI read these declarations through
the manifest (`workers.manifest`), never a copy of them."""

from __future__ import annotations

from dataclasses import dataclass

from sensitivity.metrics import Metric


@dataclass(frozen=True)
class Family:
    name: str
    module: str  # the family's loader module: `load(request) -> ModelBundle`
    description: str
    metrics: tuple[Metric, ...]  # the headline metric first

    @property
    def headline(self) -> Metric:
        return self.metrics[0]

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"{self.name} has no metric {name!r}")


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    family: str
    module: str  # what the family builds it from (an architecture, a packaged checkpoint)
    description: str


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("digits", "sensitivity.models.digits", "8x8 digit image classifiers (scikit-learn digits)",
           (Metric("accuracy", True, "top-1 accuracy (%) on the held-out test split"),
            Metric("test_loss", False, "cross-entropy on the held-out test split"))),
    Family("text-encoder", "sensitivity.models.text_encoder",
           "Hugging Face text encoders as sentence-embedding models",
           (Metric("cosine_to_fp", True, "mean cosine similarity (%) of the sentence embeddings "
                                         "to the full-precision ones"),
            Metric("worst_cosine_to_fp", True, "lowest cosine similarity (%) to full precision"),
            Metric("paraphrase_recall_at_1", True, "share (%) of sentences whose nearest "
                                                   "sentence is their paraphrase"))),
    Family("causal-lm", "sensitivity.models.causal_lm",
           "decoder-only language models (Hugging Face causal-LM folders, GGUF files)",
           (Metric("perplexity", False, "perplexity of the next token on held-out text"),
            Metric("kl_to_fp", False, "mean KL divergence (nats per token) from the "
                                      "full-precision next-token distributions"),
            Metric("top1_agreement", True, "share (%) of tokens whose most likely next token "
                                           "is the full-precision model's"))),
)}

BUILTIN_MODELS: dict[str, BuiltinModel] = {m.name: m for m in (
    BuiltinModel("digits-cnn", "digits", "sensitivity.models.digits_cnn",
                 "small residual CNN on scikit-learn digits"),
    BuiltinModel("digits-vit", "digits", "sensitivity.models.digits_vit",
                 "small vision transformer on scikit-learn digits"),
    BuiltinModel("minilm", "text-encoder", "sensitivity.models.minilm",
                 "pretrained all-MiniLM-L6-v2 sentence encoder"),
    BuiltinModel("smollm2-135m", "causal-lm", "sensitivity.models.smollm2",
                 "SmolLM2-135M-Instruct causal language model (Llama, 30 blocks; its Q4_1 GGUF "
                 "dequantized)"),
)}


def model_names() -> list[str]:
    return sorted(BUILTIN_MODELS)


def builtin(name: str) -> BuiltinModel:
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown model {name!r}; built-in models: {', '.join(model_names())}")
    return BUILTIN_MODELS[name]
