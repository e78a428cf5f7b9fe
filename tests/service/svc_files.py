"""Upload payloads built in memory: safetensors files, Hugging Face model
archives (zip, tar), calibration files, and broken variants of each."""

from __future__ import annotations

import io
import json
import math
import struct
import tarfile
import zipfile

SIZES = {"F32": 4, "F16": 2, "I64": 8, "I32": 4, "U8": 1}


def safetensors_bytes(tensors: dict[str, tuple[str, tuple[int, ...]]],
                      metadata: dict[str, str] | None = None) -> bytes:
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = math.prod(shape) * SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def bert_config() -> bytes:
    return json.dumps({"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 8,
                       "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 16, "vocab_size": 30}).encode()


def hf_files(**replace: bytes | None) -> dict[str, bytes]:
    files = {
        "config.json": bert_config(),
        "model.safetensors": safetensors_bytes({"embeddings.weight": ("F32", (30, 8)),
                                                "encoder.dense.weight": ("F32", (8, 8))}),
        "tokenizer.json": b"{}",
        "vocab.txt": b"[PAD]\n[UNK]\nhello\n",
    }
    files.update(replace)
    return {k: v for k, v in files.items() if v is not None}


def zip_bytes(files: dict[str, bytes], symlinks: dict[str, str] | None = None,
              compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return buf.getvalue()


def tar_bytes(files: dict[str, bytes], *, symlink: tuple[str, str] | None = None,
              hardlink: tuple[str, str] | None = None, fifo: str | None = None,
              mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for pair, kind in ((symlink, tarfile.SYMTYPE), (hardlink, tarfile.LNKTYPE)):
            if pair:
                info = tarfile.TarInfo(pair[0])
                info.type, info.linkname = kind, pair[1]
                tf.addfile(info)
        if fifo:
            info = tarfile.TarInfo(fifo)
            info.type = tarfile.FIFOTYPE
            tf.addfile(info)
    return buf.getvalue()
