"""Where a job's model and calibration data come from when a user uploaded them.

Plain descriptions of files on disk, free of torch, so the worker can build them
from database rows before the pipeline (and torch) is loaded. The loaders in
`sensitivity.models.uploaded` turn them into a `ModelBundle`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sensitivity.data.formats import DATA_FORMATS, MODEL_KINDS, TEXT_FORMATS


@dataclass(frozen=True)
class ModelSource:
    """An uploaded model: a Hugging Face folder (`kind="hf"`, `path` = the folder
    holding config.json), a built-in architecture's weights (`kind="state_dict"`,
    `path` = the .safetensors file) or a GGUF causal language model (`kind="gguf"`,
    `path` = the .gguf file)."""

    name: str
    kind: str
    # model_type for "hf", the built-in model name for "state_dict", the GGUF's
    # general.architecture for "gguf"
    architecture: str
    path: Path

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"unknown uploaded model kind {self.kind!r}")


@dataclass(frozen=True)
class DataSource:
    """An uploaded calibration file: safetensors tensors (`TENSOR_NAMES`), or text
    lines (.txt) / JSON lines (.jsonl)."""

    name: str
    format: str
    path: Path

    def __post_init__(self):
        if self.format not in DATA_FORMATS:
            raise ValueError(f"unknown calibration data format {self.format!r}")

    @property
    def is_text(self) -> bool:
        return self.format in TEXT_FORMATS
