"""Check a safetensors file from its header alone: an 8-byte little-endian
header length, a JSON header naming each tensor's dtype, shape and byte range,
then the tensor bytes, which must tile the rest of the file exactly."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from service.uploads import UploadError

DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}
MAX_HEADER_BYTES = 100 << 20


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int] = (0, 0)  # byte range after the header

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsInfo:
    tensors: dict[str, Tensor]
    metadata: dict[str, str]
    data_start: int = 0  # where the tensor bytes begin in the file

    def summary(self) -> dict:
        dtypes: dict[str, int] = {}
        for t in self.tensors.values():
            dtypes[t.dtype] = dtypes.get(t.dtype, 0) + t.numel
        return {"tensors": len(self.tensors),
                "params": sum(t.numel for t in self.tensors.values()), "dtypes": dtypes}


def check_safetensors(path: Path, label: str | None = None) -> SafetensorsInfo:
    """Parse and validate the header; raises UploadError(422) saying what is wrong."""
    label = label or path.name
    size = path.stat().st_size

    def bad(reason: str) -> UploadError:
        return UploadError(422, f"{label} is not a valid safetensors file: {reason}")

    if size < 10:
        raise bad("too short")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n < 2 or n > MAX_HEADER_BYTES or n > size - 8:
            raise bad(f"header length {n} does not fit a file of {size} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise bad("__metadata__ must map strings to strings")
    tensors, ranges = {}, []
    for name, entry in header.items():
        tensor, begin, end = _entry(name, entry, bad)
        tensors[name] = tensor
        ranges.append((begin, end, name))
    body = size - 8 - n
    position = 0
    for begin, end, name in sorted(ranges):
        if begin != position:
            raise bad(f"tensor {name!r} starts at byte {begin}, expected {position} "
                      "(tensors overlap or leave gaps)")
        position = end
    if position != body:
        raise bad(f"tensors cover {position} bytes but the file holds {body} after the header")
    return SafetensorsInfo(tensors, metadata, 8 + n)


def _entry(name, entry, bad) -> tuple[Tensor, int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise bad(f"tensor {name!r} needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise bad(f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise bad(f"tensor {name!r} has a malformed shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]):
        raise bad(f"tensor {name!r} has malformed data_offsets {offsets!r}")
    tensor = Tensor(dtype, tuple(shape), (offsets[0], offsets[1]))
    if offsets[1] - offsets[0] != tensor.numel * DTYPE_BYTES[dtype]:
        raise bad(f"tensor {name!r}: {offsets[1] - offsets[0]} bytes for shape {shape} "
                  f"of {dtype}")
    return tensor, offsets[0], offsets[1]


# the exponent bits of each float format: all ones is Inf or NaN
NON_FINITE_MASKS = {"F16": ("<u2", 0x7C00), "BF16": ("<u2", 0x7F80), "F32": ("<u4", 0x7F800000),
                    "F64": ("<u8", 0x7FF0000000000000)}
CHUNK_BYTES = 16 << 20


def check_finite(path: Path, info: SafetensorsInfo, label: str) -> None:
    """422 naming the first float tensor that holds a NaN or an infinity."""
    import numpy as np

    with open(path, "rb") as f:
        for name, t in info.tensors.items():
            if t.dtype not in NON_FINITE_MASKS:
                continue
            dtype, mask = NON_FINITE_MASKS[t.dtype]
            f.seek(info.data_start + t.offsets[0])
            left = t.offsets[1] - t.offsets[0]
            while left > 0:
                raw = f.read(min(left, CHUNK_BYTES))
                left -= len(raw)
                bits = np.frombuffer(raw, dtype=dtype)
                if np.any((bits & np.array(mask, dtype=dtype)) == mask):
                    raise UploadError(422, f"{label}: tensor {name!r} holds NaN or infinite "
                                           "values")
