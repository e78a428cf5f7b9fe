"""Uploads of models and calibration data: streamed to disk with a size cap and
a checksum, checked (safetensors headers, archive members, config.json) and
only then moved into place. Weights are never unpickled."""


class UploadError(Exception):
    """A rejected upload: the HTTP status and the reason the client sees."""

    def __init__(self, status_code: int, reason: str):
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason
