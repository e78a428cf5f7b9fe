"""Hidden states kept between decoder blocks: in memory up to a byte budget, past
it in files of a temporary folder (read back on use; the folder goes with the
store). One entry per (batch, block) key."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch


class HiddenStates:
    """key -> tensor, `budget` bytes in memory (None: no limit), the rest on disk."""

    def __init__(self, budget: int | None = None):
        self.budget = budget
        self._memory: dict[object, torch.Tensor] = {}
        self._disk: dict[object, Path] = {}
        self._folder: Path | None = None
        self.resident_bytes = 0
        self.spilled_bytes = 0

    def put(self, key, value: torch.Tensor) -> None:
        self.drop(key)
        value = value.detach()
        size = value.numel() * value.element_size()
        if self.budget is None or self.resident_bytes + size <= self.budget:
            self._memory[key] = value
            self.resident_bytes += size
            return
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="bitalloc-hidden-"))
        path = self._folder / f"{len(self._disk)}-{abs(hash(key))}.pt"
        torch.save(value.contiguous().clone(), path)  # a view would save its whole base
        self._disk[key] = path
        self.spilled_bytes += size

    def get(self, key) -> torch.Tensor:
        if key in self._memory:
            return self._memory[key]
        return torch.load(self._disk[key], weights_only=True)

    def __contains__(self, key) -> bool:
        return key in self._memory or key in self._disk

    def drop(self, key) -> None:
        value = self._memory.pop(key, None)
        if value is not None:
            self.resident_bytes -= value.numel() * value.element_size()
        path = self._disk.pop(key, None)
        if path is not None:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        self._memory.clear()
        self._disk.clear()
        self.resident_bytes = 0
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __del__(self):
        self.close()


class Prefixed:
    """One batch's view of a shared `HiddenStates` (its keys prefixed by the batch)."""

    def __init__(self, store: HiddenStates, prefix: int):
        self.store, self.prefix = store, prefix

    def put(self, key, value):
        self.store.put((self.prefix, key), value)

    def get(self, key):
        return self.store.get((self.prefix, key))
