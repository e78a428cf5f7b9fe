"""Checkpoints of partial estimator state, so an interrupted computation resumes.

The engine (`sensitivity.engine.compute_table`) opens a `Checkpoint` for the
table it is computing and hands it to the estimator in its context
(`NO_CHECKPOINT` when nothing is cached). A state is a JSON-serialisable dict
saved under a kind ("hutchinson", "empirical", ...): `load(kind)` gives back only
a state of that kind, so a stage never resumes from another's. `save` writes at
most every `interval_s`, always when `force=True`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from sensitivity.paths import atomic_write_bytes


class Checkpoint:
    def __init__(self, path: Path | None, interval_s: float = 10.0):
        self.path = path
        self.interval_s = interval_s
        self._last = time.monotonic()
        self.saves = 0

    def stored(self) -> dict[str, Any] | None:
        """The state on disk, of whatever kind (None when there is none or it is damaged)."""
        if self.path is None or not self.path.exists():
            return None
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # a damaged checkpoint restarts the computation

    def load(self, kind: str) -> dict[str, Any] | None:
        state = self.stored()
        return state if state is not None and state.get("kind") == kind else None

    def save(self, kind: str, state: dict[str, Any], force: bool = False) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        atomic_write_bytes(self.path, json.dumps({"kind": kind, **state}).encode())
        self._last = now
        self.saves += 1

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


NO_CHECKPOINT = Checkpoint(None)


def generator_state(gen: torch.Generator) -> list[int]:
    return gen.get_state().tolist()


def restore_generator(gen: torch.Generator, state: list[int]) -> None:
    gen.set_state(torch.tensor(state, dtype=torch.uint8))
