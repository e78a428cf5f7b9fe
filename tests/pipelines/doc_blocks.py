"""The fenced code blocks of docs/pipelines.md."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).parents[2] / "docs" / "pipelines.md"


def code_blocks(language: str) -> list[str]:
    """The blocks in `language`, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", DOC.read_text(), flags=re.S | re.M)
