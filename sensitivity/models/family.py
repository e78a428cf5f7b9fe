"""The seam between the dispatcher and a model family (DESIGN §3).

A family module (`sensitivity.models.<family>`, named in `sensitivity.catalog`)
exposes `load(request: ModelRequest) -> ModelBundle`: it owns loading, checking the
calibration data against the model, the loss and the quality metrics. A family
that reads Hugging Face folders also exposes `claims(config: dict) -> bool`, which
says whether a folder's config.json is one of its models.
"""

from __future__ import annotations

from dataclasses import dataclass

from sensitivity.catalog import BuiltinModel
from sensitivity.sources import DataSource, ModelSource


@dataclass(frozen=True)
class ModelRequest:
    """What a job asks a family to load."""

    name: str  # the job's model name: the built-in model or the upload's name
    builtin: BuiltinModel | None  # the built-in model or architecture; None for a folder upload
    source: ModelSource | None = None  # the upload: a state dict for `builtin`, or a folder
    data: DataSource | None = None  # uploaded calibration data

    @property
    def uploaded(self) -> bool:
        return self.source is not None or self.data is not None

    def source_note(self) -> str:
        if self.builtin is None:
            return "uploaded Hugging Face model folder"
        if self.source is not None:
            return f"uploaded weights on the built-in {self.builtin.name} architecture"
        return f"built-in {self.builtin.name}"
