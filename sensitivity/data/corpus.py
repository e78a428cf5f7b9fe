"""The English paraphrase corpus kept in the repo (sentences.jsonl): 160 pairs of
sentences with the same meaning in different words, across varied topics."""

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

CORPUS_PATH = Path(__file__).with_name("sentences.jsonl")


@dataclass(frozen=True)
class ParaphraseCorpus:
    sentences: tuple[str, ...]  # pair i is sentences[2i], sentences[2i + 1]

    @property
    def partner(self) -> list[int]:
        """Index of each sentence's paraphrase."""
        return [i ^ 1 for i in range(len(self.sentences))]


@cache
def load_corpus(path: Path = CORPUS_PATH) -> ParaphraseCorpus:
    sentences: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        sentences += [row["a"], row["b"]]
    return ParaphraseCorpus(tuple(sentences))
