"""A small Python client for the REST API (standard library only), used by the
CLI and by batch pipelines: submit, wait (with a timeout and backoff), result,
artifact; upload and list models and calibration datasets (the file is streamed,
never read whole). Failures raise typed errors:

    ClientError
    ├── ApiError             the server answered with an error (`status`, `detail`)
    │   ├── BadRequest       400, 409, 413, 415, 422: the request cannot succeed as sent
    │   ├── Unauthorized     401, 403: missing, invalid or revoked API key
    │   ├── NotFound         404: no such job (or not this tenant's)
    │   ├── ServerError      5xx (503: the task broker is down; nothing was submitted)
    │   └── Unreachable      no answer at all (status 0): wrong URL, server down
    ├── JobFailed            the job finished failed or cancelled (`job`)
    └── WaitTimeout          still not finished after the timeout (`job`; also a TimeoutError)
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from service.job_status import FINISHED

UPLOAD_CHUNK_BYTES = 1 << 20


class ClientError(Exception):
    """Anything this client raises."""


class ApiError(ClientError):
    def __init__(self, status: int, detail: Any):
        super().__init__(f"HTTP {status}: {detail}" if status else str(detail))
        self.status, self.detail = status, detail


class BadRequest(ApiError):
    pass


class Unauthorized(ApiError):
    pass


class NotFound(ApiError):
    pass


class ServerError(ApiError):
    pass


class Unreachable(ApiError):
    def __init__(self, detail: str):
        super().__init__(0, detail)


class JobFailed(ClientError):
    def __init__(self, job: dict):
        reason = job.get("error") or job.get("message") or job["status"]
        super().__init__(f"job {job['id']} {job['status']}: {reason}")
        self.job = job


class WaitTimeout(ClientError, TimeoutError):
    def __init__(self, job: dict, timeout_s: float):
        super().__init__(f"job {job['id']} still {job['status']} ({job.get('stage') or 'waiting'}, "
                         f"{job.get('progress', 0):.0%}) after {timeout_s:g} s")
        self.job = job


def _error(status: int, detail: Any) -> ApiError:
    if status in (401, 403):
        return Unauthorized(status, detail)
    if status == 404:
        return NotFound(status, detail)
    if status >= 500:
        return ServerError(status, detail)
    return BadRequest(status, detail)


def detail_text(detail: Any) -> str:
    """FastAPI's validation list as one line (`budgets: must be positive; …`), else the text."""
    if isinstance(detail, list):
        parts = []
        for err in detail:
            where = ".".join(str(p) for p in err.get("loc", []) if p != "body")
            msg = str(err.get("msg", err)).removeprefix("Value error, ")
            parts.append(f"{where}: {msg}" if where else msg)
        return "; ".join(parts)
    return str(detail)


def multipart_form(fields: dict[str, str], path: str | Path, *,
                   chunk_bytes: int = UPLOAD_CHUNK_BYTES) -> tuple[str, int, Iterator[bytes]]:
    """A multipart/form-data body of text `fields` and `path` as the `file` part:
    (content type, content length, the body in chunks of at most `chunk_bytes`).
    The file is opened only when the chunks are read, and read a chunk at a time."""
    path = Path(path)
    size = path.stat().st_size
    boundary = f"bitalloc-{uuid.uuid4().hex}"
    filename = path.name.replace("\\", "_").replace('"', "%22").replace("\r", "").replace("\n", "")
    head = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'
                    f"{v}\r\n".encode() for k, v in fields.items())
    head += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
             f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def chunks() -> Iterator[bytes]:
        yield head
        left = size
        with open(path, "rb") as file:
            while left > 0:
                chunk = file.read(min(chunk_bytes, left))
                if not chunk:
                    raise ClientError(f"{path} shrank while it was being uploaded")
                left -= len(chunk)
                yield chunk
        yield tail

    return f"multipart/form-data; boundary={boundary}", len(head) + size + len(tail), chunks()


@cache
def _early_answers(connection: type[http.client.HTTPConnection]) -> type:
    class Connection(connection):
        def request(self, *args, **kwargs):
            try:
                super().request(*args, **kwargs)
            except (BrokenPipeError, ConnectionResetError):
                pass  # getresponse() reads the server's answer, or fails: Unreachable

    return Connection


class _EarlyAnswers:
    """A server may answer before it has read the whole body (413: a multi-GB upload
    over its limit, seen from Content-Length). urllib sends `Connection: close`, so
    the server then closes with the body still coming, the send fails with a reset,
    and urllib would report that instead of the answer. This reads the answer."""

    def do_open(self, http_class, req, **kwargs):
        return super().do_open(_early_answers(http_class), req, **kwargs)


class _HTTPHandler(_EarlyAnswers, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_EarlyAnswers, urllib.request.HTTPSHandler):
    pass


_OPENER = urllib.request.build_opener(_HTTPHandler, _HTTPSHandler)


class Client:
    """`Client()` reads BITALLOC_URL and BITALLOC_API_KEY; arguments win."""

    def __init__(self, url: str | None = None, key: str | None = None, timeout_s: float = 30.0):
        url = url or os.environ.get("BITALLOC_URL") or "http://127.0.0.1:8000"
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        self.key = key or os.environ.get("BITALLOC_API_KEY")

    def _open(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
              *, data: bytes | Iterable[bytes] | None = None):
        """`body` is sent as JSON; `data` as it is (an iterable of chunks needs a
        Content-Length and a Content-Type in `headers`)."""
        if body is not None:
            data = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if self.key:
            req.add_header("Authorization", f"Bearer {self.key}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            return _OPENER.open(req, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                detail = json.loads(raw).get("detail", raw.decode())
            except (ValueError, AttributeError):
                detail = raw.decode(errors="replace")
            raise _error(exc.code, detail) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach {self.url}: {reason}") from None

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None, *,
                data: bytes | Iterable[bytes] | None = None) -> tuple[int, Any]:
        with self._open(method, path, body, headers, data=data) as resp:
            return resp.status, json.loads(resp.read() or b"null")

    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None, *,
               retries: int = 2) -> dict:
        """Submits a job and returns it. An idempotency key is made when none is
        given, so retrying after a lost answer or a 503 never starts it twice."""
        key = idempotency_key or f"client-{uuid.uuid4().hex}"
        for attempt in range(retries + 1):
            try:
                return self.request("POST", "/v1/jobs", spec, {"Idempotency-Key": key})[1]
            except (Unreachable, ServerError):
                if attempt == retries:
                    raise
                time.sleep(min(8.0, 2.0 ** attempt))
        raise AssertionError("unreachable")

    def job(self, job_id: str) -> dict:
        return self.request("GET", f"/v1/jobs/{job_id}")[1]

    def jobs(self, *, status: str | None = None, limit: int = 20) -> list[dict]:
        query = f"?limit={limit}" + (f"&status={status}" if status else "")
        return self.request("GET", f"/v1/jobs{query}")[1]["data"]

    def result(self, job_id: str) -> dict:
        return self.request("GET", f"/v1/jobs/{job_id}/result")[1]

    def cancel(self, job_id: str) -> dict:
        return self.request("POST", f"/v1/jobs/{job_id}/cancel")[1]

    def artifact(self, job_id: str, directory: str | Path) -> Path:
        """Downloads the packed model into `directory` (made if missing); returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with self._open("GET", f"/v1/jobs/{job_id}/artifact") as resp:
            found = re.search(r'filename="?([^";]+)"?', resp.headers.get("Content-Disposition", ""))
            name = Path(found.group(1)).name if found else f"bitalloc-{job_id}.artifact"
            target = directory / name
            with open(target, "wb") as out:
                shutil.copyfileobj(resp, out)
        return target

    def upload_model(self, path: str | Path, name: str, architecture: str | None = None) -> dict:
        """Uploads a model and returns its row (`id`, `name`, `kind`, `architecture`, …):
        a Hugging Face folder as .zip / .tar(.gz), or with `architecture` (a built-in
        one, e.g. digits-cnn) a .safetensors state dict. Never retried: an upload is
        not idempotent (a second try after a lost answer may find the name taken)."""
        fields = {"name": name} if architecture is None else {"name": name, "architecture": architecture}
        return self._upload("/v1/models", path, fields)

    def upload_dataset(self, path: str | Path, name: str) -> dict:
        """Uploads calibration data (.safetensors with `inputs` and optional `labels`,
        or .txt / .jsonl texts) and returns its row. Never retried, as upload_model."""
        return self._upload("/v1/datasets", path, {"name": name})

    def models(self) -> list[dict]:
        """This tenant's uploaded models, newest first (built-in models are not listed)."""
        return self._all("/v1/models")

    def datasets(self) -> list[dict]:
        """This tenant's uploaded calibration datasets, newest first."""
        return self._all("/v1/datasets")

    def _upload(self, endpoint: str, path: str | Path, fields: dict[str, str]) -> dict:
        content_type, length, chunks = multipart_form(fields, path)
        headers = {"Content-Type": content_type, "Content-Length": str(length)}
        return self.request("POST", endpoint, headers=headers, data=chunks)[1]

    def _all(self, endpoint: str, page: int = 200) -> list[dict]:
        rows: list[dict] = []
        while True:
            got = self.request("GET", f"{endpoint}?limit={page}&offset={len(rows)}")[1]
            rows += got["data"]
            if not got["data"] or len(rows) >= got["count"]:
                return rows

    def wait(self, job_id: str, *, timeout_s: float | None = None, poll_s: float = 0.5,
             max_poll_s: float = 10.0, on_update: Callable[[dict], None] | None = None,
             raise_on_failure: bool = True, transient_errors: int = 5) -> dict:
        """Polls until the job finishes and returns it. Polls start every `poll_s`
        and back off (×1.5) to `max_poll_s`, faster again while progress moves; a
        few lost answers in a row are ridden out. Raises JobFailed (unless
        `raise_on_failure` is false) and WaitTimeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay, last, errors, job = poll_s, None, 0, None
        while True:
            try:
                job = self.job(job_id)
                errors = 0
            except (Unreachable, ServerError):
                errors += 1
                if errors > transient_errors or job is None:
                    raise
            if job is not None and errors == 0:
                if on_update is not None:
                    on_update(job)
                if job["status"] in FINISHED:
                    if raise_on_failure and job["status"] != "succeeded":
                        raise JobFailed(job)
                    return job
                seen = (job["status"], job["stage"], round(job["progress"], 3))
                delay = poll_s if seen != last else min(max_poll_s, delay * 1.5)
                last = seen
            if deadline is not None and time.monotonic() + delay > deadline:
                raise WaitTimeout(job, timeout_s)
            time.sleep(delay)

    def run(self, spec: dict[str, Any], *, timeout_s: float | None = None,
            idempotency_key: str | None = None) -> tuple[dict, dict]:
        """Submit, wait and fetch: (job, result)."""
        job = self.submit(spec, idempotency_key)
        job = self.wait(job["id"], timeout_s=timeout_s)
        return job, self.result(job["id"])
