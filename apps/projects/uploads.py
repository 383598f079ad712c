"""Upload size cap, enforced while the body streams in (not after it has all arrived)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler


class UploadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"The file is larger than the {_size(limit)} limit.")
        self.limit = limit


def _size(limit: int) -> str:
    # Whole megabytes when the limit is one; a small limit must not read as "0 MB".
    mib = 1024 * 1024
    return f"{limit // mib} MB" if limit >= mib and limit % mib == 0 else f"{limit:,} bytes"


class MaxSizeUploadHandler(FileUploadHandler):
    """First in FILE_UPLOAD_HANDLERS: refuses a request whose declared or received size passes
    MAX_UPLOAD_BYTES, before the next handler writes any more of it to disk."""

    def handle_raw_input(
        self, input_data: Any, META: Any, content_length: int, boundary: Any, encoding: Any = None
    ) -> None:
        if content_length and content_length > settings.MAX_UPLOAD_BYTES + 64 * 1024:
            raise UploadTooLarge(settings.MAX_UPLOAD_BYTES)
        self.received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > settings.MAX_UPLOAD_BYTES:
            raise UploadTooLarge(settings.MAX_UPLOAD_BYTES)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None
