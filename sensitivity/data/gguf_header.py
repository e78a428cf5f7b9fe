"""The header of a GGUF file, read without torch or numpy: the service checks an
uploaded .gguf by it (magic bytes, version, counts, `general.architecture`) before
it stores the file, and the CLI names the model by it.

Layout (little-endian): magic "GGUF", uint32 version, uint64 tensor count, uint64
metadata count (uint32 counts in version 1), then metadata entries: a string key
(uint64 length + UTF-8 bytes), a uint32 value type, the value.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sensitivity.data.formats import GGUF_MAGIC

VERSIONS = (1, 2, 3)
MAX_KEY_BYTES = 1 << 16
MAX_STRING_BYTES = 1 << 26
MAX_ENTRIES_READ = 64  # `general.architecture` comes first in every writer we know of
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    tensors: int
    metadata_entries: int
    architecture: str  # general.architecture ("llama", "qwen2", ...)
    name: str  # general.name, "" when absent


def read_gguf_header(path: Path) -> GGUFHeader:
    """The header of the GGUF file at `path`; ValueError saying what is wrong."""
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ValueError(f"not a GGUF file (it does not start with {GGUF_MAGIC!r})")
        (version,) = _unpack(f, "<I")
        if version not in VERSIONS:
            raise ValueError(f"GGUF version {version} is not one of {VERSIONS}")
        count = "<I" if version == 1 else "<Q"
        (tensors,) = _unpack(f, count)
        (entries,) = _unpack(f, count)
        found: dict[str, str] = {}
        for _ in range(min(entries, MAX_ENTRIES_READ)):
            key = _string(f, MAX_KEY_BYTES)
            (kind,) = _unpack(f, "<I")
            value = _value(f, kind)
            if key in ("general.architecture", "general.name") and isinstance(value, str):
                found[key] = value
            if "general.architecture" in found and "general.name" in found:
                break
    if "general.architecture" not in found:
        raise ValueError("the GGUF metadata names no general.architecture")
    return GGUFHeader(version, tensors, entries, found["general.architecture"],
                      found.get("general.name", ""))


def _unpack(f: BinaryIO, fmt: str) -> tuple:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("the GGUF header is truncated")
    return struct.unpack(fmt, data)


def _string(f: BinaryIO, limit: int) -> str:
    (n,) = _unpack(f, "<Q")
    if n > limit:
        raise ValueError(f"a GGUF metadata string of {n} bytes is longer than {limit}")
    data = f.read(n)
    if len(data) != n:
        raise ValueError("the GGUF header is truncated")
    return data.decode("utf-8", "replace")


def _value(f: BinaryIO, kind: int):
    if kind in _SCALARS:
        return _unpack(f, _SCALARS[kind])[0]
    if kind == STRING:
        return _string(f, MAX_STRING_BYTES)
    if kind == ARRAY:
        (item, n) = _unpack(f, "<IQ")
        if item in _SCALARS:  # skipped, not read: token lists hold a vocabulary
            f.seek(n * struct.calcsize(_SCALARS[item]), 1)
        elif item == STRING:
            for _ in range(n):
                (length,) = _unpack(f, "<Q")
                f.seek(length, 1)
        else:
            raise ValueError(f"GGUF metadata array of unsupported type {item}")
        return None
    raise ValueError(f"GGUF metadata value of unknown type {kind}")
