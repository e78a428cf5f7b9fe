"""The exit statuses of every `bitalloc` command, and the one mapping from the
errors a command raises (bad flags, the client's typed errors) to a status and
the line printed on stderr.

    0  done
    1  the job failed or was cancelled (`keys revoke`: no key matched)
    2  bad request: bad flags, refused by the API, unknown job, bad key
    3  server unreachable or unavailable (5xx)
    4  still not finished after --timeout
"""

from __future__ import annotations

from service.cli.args import UsageError
from service.client import ApiError, JobFailed, ServerError, Unreachable, WaitTimeout, detail_text

OK = 0
FAILED = 1
BAD_REQUEST = 2
UNREACHABLE = 3
TIMEOUT = 4


def for_error(exc: Exception) -> tuple[int, str] | None:
    """(exit status, message) for an error that is the user's or the server's;
    None for anything else (a bug: let it show its traceback)."""
    if isinstance(exc, UsageError):
        return BAD_REQUEST, str(exc)
    if isinstance(exc, (Unreachable, ServerError)):
        return UNREACHABLE, detail_text(exc.detail)
    if isinstance(exc, ApiError):
        return BAD_REQUEST, detail_text(exc.detail)
    if isinstance(exc, WaitTimeout):
        return TIMEOUT, str(exc)
    if isinstance(exc, JobFailed):
        return FAILED, str(exc)
    return None
