"""Registry of built-in models: name -> loader returning a ModelBundle."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from sensitivity.bundle import ModelBundle

# name -> (module, description); modules import lazily so `bitalloc --help` stays fast.
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "digits-cnn": ("sensitivity.models.digits_cnn", "small residual CNN on scikit-learn digits"),
    "digits-vit": ("sensitivity.models.digits_vit", "small vision transformer on scikit-learn digits"),
    "minilm": ("sensitivity.models.minilm", "pretrained all-MiniLM-L6-v2 sentence encoder"),
}


def model_names() -> list[str]:
    return sorted(BUILTIN_MODELS)


def load_model(name: str) -> ModelBundle:
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown model {name!r}; built-in models: {', '.join(model_names())}")
    loader: Callable[[], ModelBundle] = import_module(BUILTIN_MODELS[name][0]).load
    return loader()
