"""The tensors of a Hugging Face folder's safetensors file(s), read one at a time.

A folder holds `model.safetensors`, or shards named by `model.safetensors.index.json`
(its `weight_map`: tensor name -> shard file). Nothing is read until a tensor is
asked for. `safe_open` maps the file, and the pages a read touches count in the
process's resident set for as long as the mapping is open: a handle kept open
over a whole pass would end it holding the whole file. So every read opens the
file and closes it again (a header parse, microseconds to milliseconds), and the
caller's tensors are the only memory that stays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
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

    def names(self) -> list[str]:
        return list(self._file)

    def files(self) -> list[Path]:
        """The safetensors files holding the tensors."""
        return sorted(set(self._file.values()))

    def __contains__(self, name: str) -> bool:
        return name in self._file

    def _path(self, name: str) -> Path:
        if name not in self._file:
            raise KeyError(f"{self.folder}: the safetensors weights hold no tensor {name!r}")
        return self._file[name]

    def read_many(self, names: Iterable[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The named tensors (converted to `dtype` when given), each file opened once and
        closed before returning."""
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self._path(name), []).append(name)
        out = {}
        for path, group in by_file.items():
            with safe_open(str(path), "pt") as f:
                for name in group:
                    t = f.get_tensor(name)
                    # a fresh tensor: the file's tensor is backed by the mapping closed next
                    out[name] = t.to(dtype, copy=True) if dtype is not None else t.clone()
        return out

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor `name`, converted to `dtype` when given."""
        return self.read_many([name], dtype)[name]

    def shape(self, name: str) -> tuple[int, ...]:
        with safe_open(str(self._path(name)), "pt") as f:
            return tuple(f.get_slice(name).get_shape())

    def numel(self, names: Iterable[str] | None = None) -> int:
        """The number of values in the named tensors (all by default), from the headers."""
        by_file: dict[Path, list[str]] = {}
        for name in self._file if names is None else names:
            by_file.setdefault(self._path(name), []).append(name)
        total = 0
        for path, group in by_file.items():
            with safe_open(str(path), "pt") as f:
                for name in group:
                    n = 1
                    for d in f.get_slice(name).get_shape():
                        n *= d
                    total += n
        return total
