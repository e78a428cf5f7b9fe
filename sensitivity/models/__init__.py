"""Model loading: picks the family that owns a job's model and asks it for the
bundle. Built-in models and built-in architectures with uploaded weights go to the
family the catalog names; a Hugging Face folder goes to the first family (in
`FOLDER_FAMILIES` order) whose `claims(config)` accepts its config.json; a model
file of a kind only one family reads (a GGUF file) goes to that family."""

from __future__ import annotations

import json
from importlib import import_module
from types import ModuleType

from sensitivity.bundle import ModelBundle
from sensitivity.catalog import BUILTIN_MODELS, FAMILIES, builtin, model_names
from sensitivity.models.family import ModelRequest
from sensitivity.sources import DataSource, ModelSource

__all__ = ["FOLDER_FAMILIES", "load_bundle", "load_model", "model_names"]

FOLDER_FAMILIES = ("causal-lm", "text-encoder")  # most specific first
FILE_FAMILIES = {"gguf": "causal-lm"}  # uploaded model files of a kind one family reads


def family_module(family: str) -> ModuleType:
    return import_module(FAMILIES[family].module)


def load_model(name: str) -> ModelBundle:
    """A built-in model as it ships."""
    return load_bundle(name)


def load_bundle(name: str, model: ModelSource | None = None,
                data: DataSource | None = None) -> ModelBundle:
    """The bundle a job runs on: `name` is the built-in model or the uploaded
    model's name; `model` and `data` are the uploads, when there are any."""
    if model is None or model.kind == "state_dict":
        architecture = name if model is None else model.architecture
        if model is not None and architecture not in BUILTIN_MODELS:
            raise ValueError(f"unknown architecture {architecture!r}; built-in architectures: "
                             f"{', '.join(BUILTIN_MODELS)}")
        entry = builtin(architecture)
        return family_module(entry.family).load(ModelRequest(name, entry, model, data))
    if model.kind in FILE_FAMILIES:
        return family_module(FILE_FAMILIES[model.kind]).load(ModelRequest(name, None, model, data))
    config = read_config(name, model)
    for family in FOLDER_FAMILIES:
        module = family_module(family)
        if module.claims(config):
            return module.load(ModelRequest(name, None, model, data))
    raise ValueError(f"model {name!r}: no model family reads a {model.architecture!r} model "
                     f"(architectures {config.get('architectures')}); families: "
                     f"{', '.join(FOLDER_FAMILIES)}")


def read_config(name: str, source: ModelSource) -> dict:
    try:
        config = json.loads((source.path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"model {name!r}: cannot read its config.json: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"model {name!r}: config.json is not a JSON object")
    return config
