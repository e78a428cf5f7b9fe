"""Read a multipart/form-data upload straight from the request stream: small
text fields into memory, the one `file` part onto disk in the staging folder,
counting bytes (over the cap: 413) and hashing as it goes."""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from service.uploads import UploadError

MAX_FIELD_BYTES = 1000
FILE_FIELD = "file"


@dataclass
class Received:
    fields: dict[str, str]
    path: Path  # the staged file
    filename: str
    size: int
    sha256: str


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


class _FormReader:
    def __init__(self, staged: Path, max_bytes: int, allowed: set[str]):
        self.staged, self.max_bytes, self.allowed = staged, max_bytes, allowed
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self.hash = hashlib.sha256()
        self.out: BinaryIO | None = None
        self.part = _Part()
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.headers: dict[bytes, bytes] = {}

    def callbacks(self):
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": lambda d, s, e: self.header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self.header_value.extend(d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self.part = _Part()
        self.headers = {}

    def on_header_end(self) -> None:
        self.headers[bytes(self.header_field).lower()] = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise UploadError(400, "a form part has no name")
        if name != FILE_FIELD and name not in self.allowed:
            allowed = ", ".join(sorted(self.allowed | {FILE_FIELD}))
            raise UploadError(422, f"unknown form field {name!r}; fields: {allowed}")
        if name in self.fields or (name == FILE_FIELD and self.out is not None):
            raise UploadError(422, f"form field {name!r} given twice")
        self.part.name = name
        if name == FILE_FIELD:
            raw = options.get(b"filename")
            if raw is None:
                raise UploadError(422, "the `file` part must be a file (give it a filename)")
            self.filename = _clean_filename(raw.decode("utf-8", "replace"))
            self.out = open(self.staged, "xb")  # noqa: SIM115 (closed in close())

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.part.name == FILE_FIELD:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise UploadError(413, f"upload larger than the limit of {self.max_bytes} bytes")
            self.hash.update(chunk)
            self.out.write(chunk)
        else:
            self.part.data.extend(chunk)
            if len(self.part.data) > MAX_FIELD_BYTES:
                raise UploadError(422, f"form field {self.part.name!r} is longer than "
                                       f"{MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self.part.name != FILE_FIELD:
            try:
                self.fields[self.part.name] = self.part.data.decode("utf-8")
            except UnicodeDecodeError:
                raise UploadError(422, f"form field {self.part.name!r} is not UTF-8") from None

    def close(self) -> None:
        if self.out is not None:
            self.out.close()


def _clean_filename(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    base = "".join(ch for ch in base if ch.isprintable())[:255]
    if not base or base in (".", ".."):
        raise UploadError(422, "the uploaded file needs a file name")
    return base


async def receive_form(request: Request, staging: Path, *, max_bytes: int,
                       allowed_fields: set[str]) -> Received:
    """The form's fields and its staged file; on any error nothing is left behind."""
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise UploadError(415, "send multipart/form-data with the file in a part named "
                               "`file` (curl -F file=@PATH -F name=NAME)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + (1 << 20):
        raise UploadError(413, f"upload larger than the limit of {max_bytes} bytes")
    staged = staging / f"{uuid.uuid4()}.upload"
    reader = _FormReader(staged, max_bytes, allowed_fields)
    parser = MultipartParser(boundary, reader.callbacks())
    try:
        try:
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except MultipartParseError as exc:
            raise UploadError(400, f"malformed multipart body: {exc}") from None
        reader.close()
        if reader.out is None:
            raise UploadError(422, "no file: send it in a form part named `file`")
        return Received(reader.fields, staged, reader.filename or "", reader.size,
                        reader.hash.hexdigest())
    except BaseException:
        reader.close()
        if staged.exists():
            os.unlink(staged)
        raise
