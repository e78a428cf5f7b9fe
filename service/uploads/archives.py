"""Zip and tar archives, checked member by member before anything is extracted:
relative paths without `..`, regular files and folders only (no links or
devices), bounded member count, total size and compression ratio. Extraction
then writes each file itself, counting the bytes it really gets."""

from __future__ import annotations

import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from service.uploads import UploadError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_members: int
    max_total_bytes: int
    max_ratio: float


@dataclass(frozen=True)
class Member:
    path: PurePosixPath
    size: int


def is_archive(path: Path) -> bool:
    return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


def extract(path: Path, dest: Path, limits: Limits) -> list[str]:
    """Check every member, then extract into `dest`; returns the file paths."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = {_safe_name(i.filename): i for i in zf.infolist()}
                members = _check(list(_zip_members(zf, limits)), limits)
                for m in members:
                    with zf.open(names[str(m.path)]) as src:
                        _write(src, dest, m)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise UploadError(422, f"the zip archive is damaged: {exc}") from None
    elif tarfile.is_tarfile(path):
        try:
            with tarfile.open(path, "r:*") as tf:
                infos = {PurePosixPath(_safe_name(i.name)): i for i in _tar_infos(tf, limits)}
                members = _check([Member(p, i.size) for p, i in infos.items() if i.isfile()],
                                 limits)
                for m in members:
                    _write(tf.extractfile(infos[m.path]), dest, m)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UploadError(422, f"the tar archive is damaged: {exc}") from None
    else:
        raise UploadError(422, "not a zip or tar archive")
    return [str(m.path) for m in members]


def _zip_members(zf: zipfile.ZipFile, limits: Limits) -> Iterator[Member]:
    for info in zf.infolist():
        name = _safe_name(info.filename)
        mode = info.external_attr >> 16
        if mode and stat.S_ISLNK(mode):
            raise UploadError(422, f"archive member {info.filename!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise UploadError(422, f"archive member {info.filename!r} is encrypted")
        if info.is_dir():
            continue
        if info.file_size > 1 << 20 and info.file_size > limits.max_ratio * max(
                info.compress_size, 1):
            raise UploadError(422, f"archive member {info.filename!r} expands "
                                   f"{info.file_size / max(info.compress_size, 1):.0f}-fold: "
                                   "refusing a likely zip bomb")
        yield Member(PurePosixPath(name), info.file_size)


def _tar_infos(tf: tarfile.TarFile, limits: Limits) -> Iterator[tarfile.TarInfo]:
    count = 0
    for info in tf:
        count += 1
        if count > limits.max_members:
            raise UploadError(413, f"archive has more than {limits.max_members} members")
        if info.issym() or info.islnk():
            raise UploadError(422, f"archive member {info.name!r} is a link")
        if not (info.isfile() or info.isdir()):
            raise UploadError(422, f"archive member {info.name!r} is not a regular file")
        yield info


def _safe_name(name: str) -> str:
    """A member path that stays inside the extraction folder, or UploadError."""
    if not name or "\x00" in name or "\\" in name:
        raise UploadError(422, f"archive member {name!r} has an unsafe name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UploadError(422, f"archive member {name!r} has an absolute path")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if ".." in parts:
        raise UploadError(422, f"archive member {name!r} points outside the archive (..)")
    if not parts:
        raise UploadError(422, f"archive member {name!r} has an empty path")
    return "/".join(parts)


def _check(members: list[Member], limits: Limits) -> list[Member]:
    if len(members) > limits.max_members:
        raise UploadError(413, f"archive has more than {limits.max_members} members")
    seen: set[str] = set()
    for m in members:
        key = str(m.path).lower()
        if key in seen:
            raise UploadError(422, f"archive member {str(m.path)!r} appears twice")
        seen.add(key)
    total = sum(m.size for m in members)
    if total > limits.max_total_bytes:
        raise UploadError(413, f"archive expands to {total} bytes, over the limit of "
                               f"{limits.max_total_bytes}")
    dirs = {str(p) for m in members for p in m.path.parents}
    clash = sorted(str(m.path) for m in members if str(m.path).lower() in
                   {d.lower() for d in dirs})
    if clash:
        raise UploadError(422, f"archive member {clash[0]!r} is both a file and a folder")
    return members


def _write(src: BinaryIO | None, dest: Path, member: Member) -> None:
    if src is None:
        raise UploadError(422, f"archive member {member.path} cannot be read")
    target = dest.joinpath(*member.path.parts)
    if not target.resolve().is_relative_to(dest.resolve()):
        raise UploadError(422, f"archive member {member.path} points outside the archive")
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(target, "xb") as out:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > member.size:
                raise UploadError(422, f"archive member {member.path} is larger than "
                                       "its header says")
            out.write(chunk)
    if written != member.size:
        raise UploadError(422, f"archive member {member.path} is shorter than its header says")
