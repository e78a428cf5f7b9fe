"""The one progress callback every stage reports through: (stage, fraction, message)."""

from collections.abc import Callable

Progress = Callable[[str, float, str], None]


def no_progress(stage: str, fraction: float, message: str) -> None:
    """Default callback: report nothing."""
