"""A worker's memory budget (`BITALLOC_MAX_MEMORY`) and what it implies for a
causal-LM folder: whether its computation must be block streamed, and how many
bytes of hidden states may stay in memory before they go to disk.

The whole-model path holds the fp32 weights and, for `fisher`, the graph of a
calibration batch: bench/scale.py measured its peak at `WHOLE_MODEL_FACTOR` × the
fp32 weights on a 1.1B Llama. Streamed, the resident part is the embedding, the
final norm and the head, one block with its work, and the Python + torch baseline;
the hidden states get what is left.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sensitivity.streaming.store import SafetensorsStore

ENV = "BITALLOC_MAX_MEMORY"
# measured by bench/scale.py on the 1.1B Llama (docs/benchmarks.md, "Scale"):
WHOLE_MODEL_FACTOR = 1.6  # whole-model fisher peak / fp32 weights (from_pretrained's bf16 -> fp32 load)
BASELINE_BYTES = 600 * 2**20  # Python, torch and transformers' model code, resident
# the resident peak over one block's fp32 weights: 2.2x for fisher (weights, graph, probes),
# 10.4x for GPTQ (its float64 inverse Hessian of the widest input, K = intermediate size)
BLOCK_WORK_FACTOR = 10.5
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'24GiB', '8 GB', '1.5e9', '800MiB' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"{ENV}={text!r}: give a size such as 24GiB, 8GB or 800MiB")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def max_memory() -> int | None:
    """The worker's budget in bytes from `BITALLOC_MAX_MEMORY`, None when unset."""
    value = os.environ.get(ENV, "").strip()
    return parse_bytes(value) if value else None


@dataclass(frozen=True)
class StreamingPlan:
    stream: bool  # block by block (the whole fp32 model would not fit)
    fp32_bytes: int
    whole_model_bytes: int  # the whole-model path's expected peak
    streamed_bytes: int  # the streamed path's resident part, hidden states aside
    hidden_budget: int | None  # bytes of hidden states in memory (None: no limit)
    budget: int | None

    def describe(self) -> str:
        mib = 2**20
        if self.budget is None:
            return "no memory budget: the whole model in memory"
        how = "block streamed" if self.stream else "whole model"
        return (f"{how}: fp32 weights {self.fp32_bytes / mib:,.0f} MiB, whole-model peak ~"
                f"{self.whole_model_bytes / mib:,.0f} MiB against a budget of {self.budget / mib:,.0f} MiB")


def plan(folder: str | os.PathLike, budget: int | None = None) -> StreamingPlan:
    """Whether the causal LM in `folder` must be streamed under `budget` (default: the
    environment's), from its tensor sizes alone (nothing is read but the headers)."""
    budget = max_memory() if budget is None else budget
    store = SafetensorsStore(Path(folder))
    names = store.names()
    blocks: dict[str, int] = {}
    resident = 0
    for name in names:
        size = store.numel([name]) * 4
        parts = name.split(".")
        if name.startswith("model.layers.") and len(parts) > 2:
            blocks[parts[2]] = blocks.get(parts[2], 0) + size
        else:
            resident += size
    fp32 = resident + sum(blocks.values())
    streamed = BASELINE_BYTES + resident + int(BLOCK_WORK_FACTOR * max(blocks.values(), default=0))
    whole = BASELINE_BYTES + int(WHOLE_MODEL_FACTOR * fp32)
    if budget is None:
        return StreamingPlan(False, fp32, whole, streamed, None, None)
    stream = whole > budget
    if stream and streamed > budget:
        raise ValueError(f"{folder}: even block streamed this model needs ~{streamed / 2**20:,.0f} MiB "
                         f"(the interpreter and libraries, embedding, head and one block in fp32), "
                         f"over {ENV}={budget / 2**20:,.0f} MiB")
    hidden = max(budget - (streamed if stream else whole), 0)
    return StreamingPlan(stream, fp32, whole, streamed, hidden, budget)
