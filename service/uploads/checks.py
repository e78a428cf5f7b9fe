"""What an uploaded model or calibration file must contain."""

from __future__ import annotations

import importlib.util
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from sensitivity.data.formats import TENSOR_NAMES, TOKENIZER_COMPANIONS, TOKENIZER_FILES, data_format
from service.uploads import UploadError
from service.uploads.safetensors_check import check_finite, check_safetensors

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
TOKENIZER_PARTS = frozenset(TOKENIZER_FILES + TOKENIZER_COMPANIONS)  # listed in the manifest
MAX_CONFIG_BYTES = 10 << 20
MAX_LINE_CHARS = 100_000


# --- Hugging Face model folders ---------------------------------------------------


def check_hf_dir(root: Path, files: list[str]) -> tuple[str, dict[str, Any]]:
    """(model_type, manifest) of an extracted Hugging Face model folder."""
    top = _model_root(root, files)
    names = [f for f in files if f.startswith(top)]
    pickled = sorted(f for f in names if f.lower().endswith(PICKLE_SUFFIXES))
    if pickled:
        raise UploadError(422, f"pickled files are never loaded: {', '.join(pickled[:5])}; "
                               "save the weights with safetensors instead")
    config = _read_config(root / top / "config.json")
    model_type = config["model_type"]
    if not _transformers_knows(model_type):
        raise UploadError(422, f"config.json model_type {model_type!r} is not an architecture "
                               "the installed transformers can build")
    weights = sorted(f for f in names if f.endswith(".safetensors"))
    if not weights:
        raise UploadError(422, "no *.safetensors weights in the archive")
    totals = {"tensors": 0, "params": 0, "dtypes": {}}
    for rel in weights:
        info = check_safetensors(root / rel, rel)
        check_finite(root / rel, info, rel)
        summary = info.summary()
        totals["tensors"] += summary["tensors"]
        totals["params"] += summary["params"]
        for dtype, n in summary["dtypes"].items():
            totals["dtypes"][dtype] = totals["dtypes"].get(dtype, 0) + n
    _check_index(root / top, names, top)
    return model_type, {
        "root": top.rstrip("/"),
        "model_type": model_type,
        "architectures": [a for a in config.get("architectures") or [] if isinstance(a, str)],
        "weights": {"files": [w[len(top):] for w in weights], **totals},
        "tokenizer": sorted(f[len(top):] for f in names if f[len(top):] in TOKENIZER_PARTS),
        "files": len(names),
    }


def _model_root(root: Path, files: list[str]) -> str:
    """'' when config.json is at the top, 'dir/' when everything sits in one folder."""
    if "config.json" in files:
        return ""
    tops = {f.split("/", 1)[0] for f in files}
    if len(tops) == 1 and f"{next(iter(tops))}/config.json" in files:
        return next(iter(tops)) + "/"
    raise UploadError(422, "no config.json at the top of the archive (or of its one folder): "
                           "upload a Hugging Face model folder (config.json, *.safetensors, "
                           "tokenizer files)")


def _read_config(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UploadError(422, "config.json is larger than 10 MB")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UploadError(422, f"config.json is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise UploadError(422, "config.json must be an object with a model_type")
    return config


def _check_index(top: Path, names: list[str], prefix: str) -> None:
    index = top / "model.safetensors.index.json"
    if not index.exists():
        return
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = set(weight_map.values())
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError, json.JSONDecodeError):
        raise UploadError(422, "model.safetensors.index.json has no valid weight_map") from None
    missing = sorted(s for s in shards if not isinstance(s, str) or prefix + s not in names)
    if missing:
        raise UploadError(422, f"model.safetensors.index.json names missing shards: "
                               f"{', '.join(map(str, missing[:5]))}")


@lru_cache
def _known_model_types() -> frozenset[str] | None:
    """model_type names transformers maps to a config class, read from its source:
    importing its auto classes would load torch into the service. None when the
    source is not where this expects (then any model_type passes here)."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    auto = Path(next(iter(spec.submodule_search_locations)), "models", "auto")
    names: set[str] = set()
    for source in ("configuration_auto.py", "auto_mappings.py"):
        if (auto / source).exists():
            text = (auto / source).read_text(encoding="utf-8")
            names.update(re.findall(r'["\']([\w-]+)["\']\s*[,:]\s*["\']\w+Config["\']', text))
    return frozenset(names) or None


def _transformers_knows(model_type: str) -> bool:
    known = _known_model_types()
    return known is None or model_type in known


# --- calibration data -------------------------------------------------------------


def check_dataset(path: Path, filename: str) -> tuple[str, dict[str, Any]]:
    """(format, manifest) of a calibration file, by its extension."""
    fmt = data_format(filename)
    if fmt == "safetensors":
        return fmt, _check_tensors(path, filename)
    if fmt == "text":
        return fmt, _check_lines(path, filename, json_lines=False)
    if fmt == "jsonl":
        return fmt, _check_lines(path, filename, json_lines=True)
    raise UploadError(415, f"unsupported calibration file {filename!r}: use .safetensors "
                           "(tensors `inputs`, optional `labels`), .txt (one text per line) "
                           "or .jsonl (strings or {\"text\": ..., \"label\": ...})")


def _check_tensors(path: Path, filename: str) -> dict[str, Any]:
    info = check_safetensors(path, filename)
    unknown = sorted(set(info.tensors) - set(TENSOR_NAMES))
    if unknown:
        raise UploadError(422, f"{filename}: unexpected tensors {', '.join(unknown)}; "
                               f"allowed: {', '.join(TENSOR_NAMES)}")
    if "inputs" not in info.tensors:
        raise UploadError(422, f"{filename}: no `inputs` tensor")
    inputs = info.tensors["inputs"]
    if not inputs.shape or inputs.shape[0] == 0:
        raise UploadError(422, f"{filename}: `inputs` needs a leading sample dimension > 0")
    n = inputs.shape[0]
    for name in ("labels", "attention_mask"):
        t = info.tensors.get(name)
        if t is not None and (not t.shape or t.shape[0] != n):
            raise UploadError(422, f"{filename}: `{name}` has {t.shape[0] if t.shape else 0} "
                                   f"rows but `inputs` has {n}")
    return {"samples": n, "inputs": {"dtype": inputs.dtype, "shape": list(inputs.shape)},
            "has_labels": "labels" in info.tensors}


def _check_lines(path: Path, filename: str, json_lines: bool) -> dict[str, Any]:
    samples, labels, longest = 0, 0, 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise UploadError(422, f"{filename} line {number} is not UTF-8") from None
            if not line.strip():
                continue
            text, has_label = _parse_line(line, filename, number) if json_lines else (line, False)
            if len(text) > MAX_LINE_CHARS:
                raise UploadError(422, f"{filename} line {number} is longer than "
                                       f"{MAX_LINE_CHARS} characters")
            samples += 1
            labels += has_label
            longest = max(longest, len(text))
    if samples == 0:
        raise UploadError(422, f"{filename} holds no text")
    if json_lines and labels not in (0, samples):
        raise UploadError(422, f"{filename}: {labels} of {samples} lines have a label; "
                               "give every line a label or none")
    return {"samples": samples, "max_chars": longest, "has_labels": labels > 0}


def _parse_line(line: str, filename: str, number: int) -> tuple[str, bool]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UploadError(422, f"{filename} line {number} is not JSON: {exc}") from None
    if isinstance(item, str):
        return item, False
    if isinstance(item, dict) and isinstance(item.get("text"), str) and set(item) <= {
            "text", "label"}:
        label = item.get("label")
        if label is not None and not isinstance(label, (int, str)) or isinstance(label, bool):
            raise UploadError(422, f"{filename} line {number}: label must be an integer or "
                                   "a string")
        return item["text"], "label" in item
    raise UploadError(422, f"{filename} line {number}: expected a string or an object "
                           "with `text` (and optional `label`)")
