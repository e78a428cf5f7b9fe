"""Checkpoints of partial estimator state, so an interrupted computation resumes.

The engine (`sensitivity.engine.compute_table`) opens a `Checkpoint` for the
table it is computing and makes it current; an estimator asks for
`current_checkpoint()` (a no-op checkpoint when none is open), restores its state
from `load()` and calls `save(state)` as it goes (written at most every
`interval_s`, always when `force=True`). States are JSON-serialisable dicts.
"""

from __future__ import annotations

import contextlib
import contextvars
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

    def load(self) -> dict[str, Any] | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # a damaged checkpoint restarts the computation

    def save(self, state: dict[str, Any], force: bool = False) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        atomic_write_bytes(self.path, json.dumps(state).encode())
        self._last = now
        self.saves += 1

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


_NONE = Checkpoint(None)
_current: contextvars.ContextVar[Checkpoint] = contextvars.ContextVar("checkpoint", default=_NONE)


def current_checkpoint() -> Checkpoint:
    return _current.get()


@contextlib.contextmanager
def using_checkpoint(ckpt: Checkpoint):
    token = _current.set(ckpt)
    try:
        yield ckpt
    finally:
        _current.reset(token)


def generator_state(gen: torch.Generator) -> list[int]:
    return gen.get_state().tolist()


def restore_generator(gen: torch.Generator, state: list[int]) -> None:
    gen.set_state(torch.tensor(state, dtype=torch.uint8))
