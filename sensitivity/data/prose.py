"""The English prose kept in the repo for causal language models
(`prose/alice_in_wonderland.txt`, public domain; see `prose/README.md`): a
calibration half (chapters I–VI) and an evaluation half (chapters VII–XII) that
do not overlap."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PROSE_PATH = Path(__file__).with_name("prose") / "alice_in_wonderland.txt"
TITLE = "Alice's Adventures in Wonderland (Lewis Carroll, 1865; public domain)"
SPLIT_BEFORE = "CHAPTER VII"


@dataclass(frozen=True)
class ProseCorpus:
    title: str
    calibration: str  # chapters I–VI
    evaluation: str  # chapters VII–XII


def reflow(text: str) -> str:
    """Paragraphs (blank-line separated) on one line each, joined by blank lines."""
    paragraphs = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


@cache
def load_prose(path: Path = PROSE_PATH) -> ProseCorpus:
    text = path.read_text(encoding="utf-8")
    start = text.index("CHAPTER I\n")
    split = text.index(SPLIT_BEFORE)
    return ProseCorpus(TITLE, reflow(text[start:split]), reflow(text[split:]))
