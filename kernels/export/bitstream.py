"""Dense bit streams: what compressed-tensors (>= 0.20) and GPTQ checkpoints store.

Element i of a row occupies bits [i·b, (i+1)·b) of the row's little-endian stream of
int32 words, values crossing word boundaries where b does not divide 32. For 2, 4 and
8 bits this is GPTQ's "32/b values per word, lowest first"; for 3 bits it is GPTQ's
32-values-in-three-words layout.
"""

from __future__ import annotations

import math

import torch


def dense_pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned `bits`-bit integers (rows, n) along dim 1 into int32 words
    (rows, ceil(n·bits/32)): element i occupies bits [i·bits, (i+1)·bits) of the
    row's little-endian bit stream."""
    rows, n = values.shape
    words = math.ceil(n * bits / 32)
    v = values.to(torch.int64)
    start = torch.arange(n, dtype=torch.int64) * bits
    word, offset = start // 32, start % 32
    out = torch.zeros(rows, words + 1, dtype=torch.int64)
    out.scatter_add_(1, word.expand(rows, n), (v << offset) & 0xFFFFFFFF)
    spill = offset + bits > 32
    if bool(spill.any()):
        high = v[:, spill] >> (32 - offset[spill])
        out.scatter_add_(1, (word[spill] + 1).expand(rows, int(spill.sum())), high)
    out = out[:, :words]
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)
