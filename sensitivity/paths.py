"""Where bitalloc keeps what it computes once and reuses (trained models, tables)."""

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """`$BITALLOC_CACHE` (default `~/.cache/bitalloc`), created on demand."""
    root = Path(os.environ.get("BITALLOC_CACHE") or Path.home() / ".cache" / "bitalloc")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
