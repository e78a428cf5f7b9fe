"""Bit packing: exact round trips, the documented layout, and its errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import packing
from kernels.packing import (
    PACKABLE_BITS,
    pack_codes,
    packed_rows,
    planes,
    select_codes,
    unpack_codes,
)


def random_codes(length: int, columns: int, bits: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1 << bits, (length, columns), generator=gen, dtype=torch.uint8)


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from(PACKABLE_BITS), length=st.integers(1, 130),
       columns=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_round_trip_is_exact(bits, length, columns, seed):
    codes = random_codes(length, columns, bits, seed)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.int32
    assert packed.shape == (packed_rows(length, bits), columns)
    assert torch.equal(unpack_codes(packed, bits, length), codes)


@pytest.mark.parametrize("bits", PACKABLE_BITS)
def test_packing_in_column_chunks_gives_the_same_words(bits, monkeypatch):
    codes = random_codes(70, 23, bits, seed=bits)
    whole = pack_codes(codes, bits)
    monkeypatch.setattr(packing, "PACK_CHUNK", 70 * 4)  # chunks of 4 columns, the last of 3
    assert torch.equal(pack_codes(codes, bits), whole)


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from(PACKABLE_BITS), length=st.integers(1, 100),
       seed=st.integers(0, 10_000), picks=st.lists(st.integers(0, 10_000), max_size=12))
def test_select_codes_reads_single_positions(bits, length, seed, picks):
    codes = random_codes(length, 3, bits, seed)
    index = torch.tensor([p % length for p in picks], dtype=torch.int64)
    assert torch.equal(select_codes(pack_codes(codes, bits), bits, length, index), codes[index])


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_power_of_two_widths_use_the_gptq_layout(bits):
    per_word = 32 // bits
    codes = random_codes(64, 2, bits, seed=bits)
    packed = pack_codes(codes, bits).to(torch.int64) & 0xFFFFFFFF
    for k in range(64):
        word = packed[k // per_word]
        value = (word >> ((k % per_word) * bits)) & ((1 << bits) - 1)
        assert torch.equal(value, codes[k].long())


def test_three_bits_pack_32_values_in_three_words():
    assert planes(3) == (2, 1)
    codes = random_codes(32, 1, 3, seed=3)
    packed = pack_codes(codes, 3).to(torch.int64) & 0xFFFFFFFF
    assert packed.shape == (3, 1)
    for k in range(32):
        low = (packed[k // 16, 0] >> (2 * (k % 16))) & 3  # 2-bit plane: words 0, 1
        high = (packed[2, 0] >> k) & 1  # 1-bit plane: word 2
        assert int(low | (high << 2)) == int(codes[k, 0])


def test_plane_widths():
    assert {b: planes(b) for b in PACKABLE_BITS} == {
        2: (2,), 3: (2, 1), 4: (4,), 5: (4, 1), 6: (4, 2), 8: (8,)}


def test_padding_rounds_length_up_to_32_values():
    assert packed_rows(1, 4) == 4
    assert packed_rows(32, 4) == 4
    assert packed_rows(33, 3) == 6
    assert packed_rows(4096, 2) == 256


@pytest.mark.parametrize("bits", [1, 7, 16])
def test_unpackable_widths_are_rejected(bits):
    with pytest.raises(ValueError, match="cannot pack"):
        pack_codes(torch.zeros(4, 4, dtype=torch.uint8), bits)


def test_bad_codes_are_rejected():
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_codes(torch.full((4, 4), 16, dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match="integer dtype"):
        pack_codes(torch.zeros(4, 4), 4)
    with pytest.raises(ValueError, match="2-D"):
        pack_codes(torch.zeros(4, dtype=torch.uint8), 4)


def test_wrong_packed_shape_is_rejected():
    packed = pack_codes(torch.zeros(64, 2, dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match="packed rows"):
        unpack_codes(packed, 4, 100)
    with pytest.raises(ValueError, match="int32"):
        unpack_codes(packed.long(), 4, 64)
    with pytest.raises(ValueError, match="index"):
        select_codes(packed, 4, 64, torch.tensor([64]))
