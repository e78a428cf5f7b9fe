"""The tensors of a Hugging Face folder's safetensors file(s), read one at a time.

A folder holds `model.safetensors`, or shards named by `model.safetensors.index.json`
(its `weight_map`: tensor name -> shard file). Nothing is read until a tensor is
asked for; `safe_open` maps the file and copies out only that tensor, so resident
memory is the tensors the caller keeps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


class SafetensorsStore:
    """name -> tensor of a folder's safetensors weights, read lazily."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._file = {name: self.folder / file for name, file in weight_map.items()}
        elif (self.folder / SINGLE).is_file():
            with safe_open(str(self.folder / SINGLE), "pt") as f:
                self._file = {name: self.folder / SINGLE for name in f.keys()}
        else:
            raise ValueError(f"{self.folder}: no {SINGLE} and no {INDEX}: block streaming reads "
                             "safetensors weights only")
        self._open: dict[Path, object] = {}

    def names(self) -> list[str]:
        return list(self._file)

    def __contains__(self, name: str) -> bool:
        return name in self._file

    def _handle(self, name: str):
        if name not in self._file:
            raise KeyError(f"{self.folder}: the safetensors weights hold no tensor {name!r}")
        path = self._file[name]
        if path not in self._open:
            self._open[path] = safe_open(str(path), "pt")
        return self._open[path]

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor `name`, converted to `dtype` when given (a fresh tensor either way)."""
        t = self._handle(name).get_tensor(name)
        return t if dtype is None or t.dtype == dtype else t.to(dtype)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def numel(self, names=None) -> int:
        total = 0
        for name in self._file if names is None else names:
            n = 1
            for d in self.shape(name):
                n *= d
            total += n
        return total
