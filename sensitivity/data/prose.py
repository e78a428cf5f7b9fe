"""The English prose kept in the repo for causal language models (`prose/`, public
domain; sources and licences in `prose/README.md`), each work split into a calibration
part and an evaluation part that do not overlap:

- Lewis Carroll, *Alice's Adventures in Wonderland* (1865): chapters I–VI calibrate,
  VII–XII evaluate;
- *Workshop on Electronic Texts: Proceedings* (Library of Congress, 1992): sessions
  I–III calibrate, IV–VII evaluate (the front matter and the appendices are left out).

The calibration half is Alice's part followed by the workshop's, the evaluation half
likewise, so the first windows of either half (what the sensitivity methods and the
perplexity use) are Carroll's; the quantizer's longer calibration reaches the workshop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PROSE_DIR = Path(__file__).with_name("prose")


@dataclass(frozen=True)
class Work:
    title: str
    file: str
    start: str  # the calibration part begins here
    split: str  # the evaluation part begins here
    end: str | None = None  # and ends before this (None: at the end of the file)
    calibration_part: str = ""  # what each part is, for the facts a result reports
    evaluation_part: str = ""
    strip: str | None = None  # a multi-line pattern of e-text furniture removed before reflowing


WORKS = (
    Work("Alice's Adventures in Wonderland (Lewis Carroll, 1865; public domain)",
         "alice_in_wonderland.txt", "CHAPTER I\n", "CHAPTER VII",
         calibration_part="chapters I-VI", evaluation_part="chapters VII-XII"),
    Work("Workshop on Electronic Texts: Proceedings (Library of Congress, 1992; "
         "US government work, public domain)",
         "loc_workshop_electronic_texts.txt", "SESSION I.  ", "SESSION IV.  ", "Appendix I:  PROGRAM",
         calibration_part="sessions I-III", evaluation_part="sessions IV-VII",
         # the `+`-ruled keyword boxes heading each talk and the `******` rules between talks
         strip=r"^\++\n.*?^\++\n|^\s*\*+\s*$"),
)


@dataclass(frozen=True)
class ProseCorpus:
    title: str
    calibration: str  # every work's calibration part, in WORKS order
    evaluation: str  # every work's evaluation part, in WORKS order
    calibration_parts: str  # e.g. "Alice chapters I-VI, workshop sessions I-III"
    evaluation_parts: str


def reflow(text: str) -> str:
    """Paragraphs (blank-line separated) on one line each, joined by blank lines."""
    paragraphs = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def _parts(work: Work) -> tuple[str, str]:
    text = (PROSE_DIR / work.file).read_text(encoding="utf-8")
    start, split = text.index(work.start), text.index(work.split)
    end = text.index(work.end) if work.end else len(text)

    def clean(part: str) -> str:
        return reflow(re.sub(work.strip, "", part, flags=re.M | re.S) if work.strip else part)

    return clean(text[start:split]), clean(text[split:end])


@cache
def load_prose() -> ProseCorpus:
    parts = [_parts(w) for w in WORKS]
    short = [w.title.split(" (")[0] for w in WORKS]
    return ProseCorpus(
        "; ".join(w.title for w in WORKS),
        "\n\n".join(c for c, _ in parts), "\n\n".join(e for _, e in parts),
        ", ".join(f"{s} {w.calibration_part}" for s, w in zip(short, WORKS)),
        ", ".join(f"{s} {w.evaluation_part}" for s, w in zip(short, WORKS)))
