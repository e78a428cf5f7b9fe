"""Bit packing of integer codes into int32 words, along dim 0 of a (length, columns) matrix.

Layout (the same for every width; the kernels and the CPU path read it the same way):

* `length` is padded with zero codes to a multiple of 32 (`BLOCK_VALUES`).
* A width b is split into bit planes whose widths are powers of two, widest first:
  2 -> (2,), 3 -> (2, 1), 4 -> (4,), 5 -> (4, 1), 6 -> (4, 2), 8 -> (8,).
  Plane p holds bits [low, low + p) of every code, low = sum of earlier planes.
* A plane of width p packs 32 / p consecutive values per word: value i of the plane
  sits in word row `i // (32 / p)` at bit `(i % (32 / p)) * p`. Planes are stacked
  along dim 0, so 32 values take b words in all, and the packed matrix is
  (padded_length * b / 32, columns) int32.

For 2, 4 and 8 bits this is exactly the GPTQ layout (one plane, value k in word
k // (32 / b)); 3 bits packs 32 values in three words (a 2-bit plane of two words and
a 1-bit plane of one word), so no value ever straddles two words. Words are stored as
int32 with two's-complement wrap-around; readers mask after shifting.
"""

from __future__ import annotations

import torch

WORD_BITS = 32
BLOCK_VALUES = 32  # lengths are padded to a multiple of this; every plane fills whole words
PACKABLE_BITS = (2, 3, 4, 5, 6, 8)


def planes(bits: int) -> tuple[int, ...]:
    """Power-of-two plane widths of a b-bit code, widest (low bits) first."""
    if bits not in PACKABLE_BITS:
        raise ValueError(f"cannot pack {bits}-bit codes; packable widths are {PACKABLE_BITS}")
    high = 1 << (bits.bit_length() - 1)
    return (high,) if high == bits else (high, bits - high)


def padded_length(length: int) -> int:
    """`length` rounded up to a multiple of 32 values."""
    return -(-length // BLOCK_VALUES) * BLOCK_VALUES


def packed_rows(length: int, bits: int) -> int:
    """Rows of the packed matrix for `length` codes of `bits` bits: padded_length * b / 32."""
    planes(bits)
    return padded_length(length) * bits // WORD_BITS


def plane_offsets(length: int, bits: int) -> tuple[int, ...]:
    """First packed row of each plane."""
    offsets, row = [], 0
    for p in planes(bits):
        offsets.append(row)
        row += padded_length(length) * p // WORD_BITS
    return tuple(offsets)


PACK_CHUNK = 1 << 22  # codes packed at once (a 32,000 x 2,048 embedding: 16 chunks of 16 MB int32)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack (length, columns) integer codes in [0, 2^bits) into
    (padded_length * bits / 32, columns) int32 words along dim 0."""
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D (length, columns), got shape {tuple(codes.shape)}")
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise ValueError(f"codes must have an integer dtype, got {codes.dtype}")
    widths = planes(bits)
    length, columns = codes.shape
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {(1 << bits) - 1}] for {bits} bits")
    step = max(1, PACK_CHUNK // max(length, 1))
    if columns > step:  # columns pack independently: a chunk at a time bounds the int32 temporaries
        return torch.cat([pack_codes(codes[:, i:i + step], bits) for i in range(0, columns, step)], 1)
    c = codes.to(torch.int32).contiguous()
    pad = padded_length(length) - length
    if pad:
        c = torch.cat([c, c.new_zeros(pad, columns)])
    words, low = [], 0
    for p in widths:
        per_word = WORD_BITS // p
        part = ((c >> low) & ((1 << p) - 1)).reshape(-1, per_word, columns)
        word = torch.zeros(part.shape[0], columns, dtype=torch.int32, device=c.device)
        for j in range(per_word):  # int32 shifts wrap into the sign bit, as stored
            word |= part[:, j] << (j * p)
        words.append(word)
        low += p
    return torch.cat(words)


def unpack_codes(packed: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """Inverse of `pack_codes`: (packed_rows, columns) int32 -> (length, columns) uint8."""
    if packed.dim() != 2 or packed.dtype != torch.int32:
        raise ValueError(
            f"packed codes must be a 2-D int32 tensor, got {packed.dtype} {tuple(packed.shape)}"
        )
    if packed.shape[0] != packed_rows(length, bits):
        raise ValueError(
            f"{length} {bits}-bit values take {packed_rows(length, bits)} packed rows, "
            f"got {packed.shape[0]}"
        )
    full = padded_length(length)
    columns = packed.shape[1]
    out = torch.zeros(full, columns, dtype=torch.int32, device=packed.device)
    row, low = 0, 0
    for p in planes(bits):
        per_word = WORD_BITS // p
        block = packed[row : row + full // per_word]
        shifts = torch.arange(per_word, dtype=torch.int32, device=packed.device) * p
        # arithmetic shifts of the signed words are fine: the mask drops the sign bits
        values = (block[:, None, :] >> shifts[None, :, None]) & ((1 << p) - 1)
        out |= values.reshape(full, columns) << low
        row += full // per_word
        low += p
    return out[:length].to(torch.uint8)


def select_codes(packed: torch.Tensor, bits: int, length: int,
                 index: torch.Tensor) -> torch.Tensor:
    """Codes at positions `index` (1-D, along the packed dimension) of a matrix packed by
    `pack_codes` for `length` values: (len(index), columns) uint8, without unpacking the rest."""
    if packed.dim() != 2 or packed.dtype != torch.int32:
        raise ValueError(
            f"packed codes must be a 2-D int32 tensor, got {packed.dtype} {tuple(packed.shape)}"
        )
    if packed.shape[0] != packed_rows(length, bits):
        raise ValueError(f"{length} {bits}-bit values take {packed_rows(length, bits)} packed "
                         f"rows, got {packed.shape[0]}")
    idx = index.to(device=packed.device, dtype=torch.int64)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= length):
        raise ValueError(f"index must lie in [0, {length})")
    out = torch.zeros(idx.numel(), packed.shape[1], dtype=torch.int32, device=packed.device)
    row, low = 0, 0
    for p in planes(bits):
        per_word = WORD_BITS // p
        words = packed[row + idx // per_word]
        out |= ((words >> ((idx % per_word) * p).to(torch.int32)[:, None]) & ((1 << p) - 1)) << low
        row += padded_length(length) // per_word
        low += p
    return out.to(torch.uint8)
