"""Berth over local disk whose blob reads misbehave on demand, for tests of what the server does
when storage fails while a blob is being served: `gunicorn -c gunicorn.conf.py
tests.e2e.faulty_app:app`. A blob whose content starts with `FAULT:<mode>\\n` is read as `mode`
says; every other object is the filesystem driver's, so blobs are pushed as usual.

- streamed: read through a reader without fileno(), as from S3 (no fault)
- fail-first: that reader fails at its first read
- fail-mid: it fails after its first MiB
- short: it ends after its first MiB, whatever the length asked
- short-file: the size is reported 1000 bytes larger than the file (the sendfile path)
"""

from __future__ import annotations

import logging

from app import create_app
from settings import Settings
from storage.driver import StorageError
from storage.drivers.filesystem import FilesystemDriver

MiB = 1024 * 1024


def marker(mode: str) -> bytes:
    """The first bytes of a blob that FaultyDriver serves with fault `mode`."""
    return f"FAULT:{mode}\n".encode()


class _StreamedReader:
    """A reader with no fileno(), failing as told."""

    def __init__(self, inner, mode: str) -> None:
        self._inner = inner
        self._mode = mode
        self._given = 0

    def read(self, size: int = -1) -> bytes:
        if self._mode == "fail-first" or (self._mode == "fail-mid" and self._given >= MiB):
            raise StorageError("injected storage failure")
        if self._mode == "short" and self._given >= MiB:
            return b""
        data = self._inner.read(size)
        self._given += len(data)
        return data

    def close(self) -> None:
        self._inner.close()


class FaultyDriver(FilesystemDriver):
    def size(self, key: str) -> int:
        size = super().size(key)
        return size + 1000 if self._mode(key) == "short-file" else size

    def open_range(self, key: str, start: int = 0, length: int | None = None):
        mode = self._mode(key)
        reader = super().open_range(key, start, length)
        return reader if mode in (None, "short-file") else _StreamedReader(reader, mode)

    def _mode(self, key: str) -> str | None:
        if not (key.startswith("blobs/") and key.endswith("/data")):
            return None
        with open(self.path(key), "rb") as fh:
            head = fh.read(32)
        if not head.startswith(b"FAULT:"):
            return None
        return head[6:].split(b"\n", 1)[0].decode()


logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
_settings = Settings.from_env()
app = create_app(_settings, driver=FaultyDriver(_settings.data_dir))
