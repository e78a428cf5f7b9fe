"""Progress for people (a redrawn bar on a terminal) and pipelines (plain lines)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressPrinter:
    """A `Progress` callback: (stage, fraction, message)."""

    def __init__(self, stream: TextIO = sys.stderr, min_interval_s: float = 0.2):
        self.stream = stream
        self.tty = stream.isatty()
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self._stage = None

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        now = time.monotonic()
        new_stage = stage != self._stage
        if not new_stage and fraction < 1.0 and now - self._last < self.min_interval_s:
            return
        self._last, self._stage = now, stage
        if self.tty:
            filled = int(round(20 * max(0.0, min(1.0, fraction))))
            line = f"\r{stage:>11} [{'#' * filled}{'.' * (20 - filled)}] {fraction:4.0%} {message}"
            self.stream.write(line[:120].ljust(120) + ("\n" if fraction >= 1.0 else ""))
        elif new_stage or fraction >= 1.0:
            self.stream.write(f"{stage}: {message}\n")
        self.stream.flush()
