"""The pipeline's stages, declared once: their order and their share of a job's
overall progress. Free of torch, so the service's runner reads them too."""

from __future__ import annotations

from typing import NamedTuple


class Stage(NamedTuple):
    name: str
    weight: float  # share of the overall progress


STAGES = (Stage("load", 0.10), Stage("layers", 0.05), Stage("sensitivity", 0.60),
          Stage("solve", 0.05), Stage("evaluate", 0.15), Stage("artifact", 0.05))
STAGE_NAMES = tuple(s.name for s in STAGES)


def overall_progress(stage: str, fraction: float) -> float | None:
    """Overall progress in [0, 1] at `fraction` of `stage`; None for an unknown stage."""
    done = 0.0
    for name, weight in STAGES:
        if name == stage:
            return done + weight * max(0.0, min(1.0, fraction))
        done += weight
    return None
