"""S3-compatible object storage (Cloudflare R2, AWS S3, MinIO, moto) through boto3.

Small objects are plain GET/PUT; uploads go through S3AppendWriter (storage/s3_writer.py), which
re-cuts the stream into equal parts as R2 demands. Every S3 error is translated in one place
(`_translate`), so the registry above sees only storage errors."""

from __future__ import annotations

import base64
import logging
import os
import random
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from urllib3.exceptions import HTTPError

from settings import S3Settings
from storage.driver import (
    InvalidKey,
    ObjectBusy,
    ObjectInfo,
    ObjectNotFound,
    PendingUpload,
    StorageDriver,
    StorageError,
)

log = logging.getLogger("berth.s3")

READ_CHUNK = 1024 * 1024
DELETE_BATCH = 1000  # DeleteObjects' limit
SMALL_READ_ATTEMPTS = 4  # whole reads of small objects (state, carries, manifests, tags, leases)
STREAM_RESUMES = 3  # reopenings of a blob stream in a row without a byte read in between


class BackendUnavailable(StorageError):
    """The object store is throttling or unreachable: worth a retry later."""


_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}
_BUSY = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_THROTTLED = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "503",
    "429",
    "ServiceUnavailable",
    "TooManyRequests",
}


def _translate(exc: Exception, key: str) -> StorageError:
    """The one table from S3 errors to storage errors."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _NOT_FOUND or status == "404":
            return ObjectNotFound(key)
        if code in _BUSY or status == "412":
            return ObjectBusy(key)
        if code in _THROTTLED or status in ("429", "503"):
            return BackendUnavailable(f"object store busy ({code or status})")
        return StorageError(f"object store error {code or status} on {key}")
    if isinstance(exc, BotoCoreError | HTTPError):
        # HTTPError: botocore reads an error answer's body itself, and lets a connection that
        # breaks while it does (urllib3's ProtocolError) through unwrapped.
        return BackendUnavailable(f"object store unreachable: {type(exc).__name__}")
    return StorageError(str(exc))


@contextmanager
def s3_errors(key: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError, HTTPError) as exc:
        raise _translate(exc, key) from exc


def crc32(data: bytes) -> dict[str, str]:
    """The CRC32 parameter for a PUT, computed here so it travels as a header (botocore would
    send its own as an aws-chunked trailer over HTTPS, which R2 refuses). The store checks it on
    arrival and returns it with every whole-object GET."""
    value = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    return {"ChecksumAlgorithm": "CRC32", "ChecksumCRC32": value}


class S3Reader:
    """A ranged object body, read in pieces; never the whole object at once. A body that breaks
    mid-stream (a reset, a short read) is reopened where it broke, with `If-Match` on the ETag
    so the bytes cannot come from another version of the object."""

    def __init__(self, driver: S3Driver, key: str, start: int, response: dict) -> None:
        self._driver = driver
        self._key = key
        self._body = response["Body"]
        self._etag = response.get("ETag")
        self._pos = start
        self._end = start + int(response.get("ContentLength", 0))
        self._failures = 0

    def read(self, size: int = -1) -> bytes:
        from botocore.exceptions import BotoCoreError

        wanted = READ_CHUNK if size is None or size < 0 else size
        wanted = min(wanted, self._end - self._pos)
        while wanted > 0:
            try:
                chunk = self._body.read(wanted)
                if not chunk:  # ended early without an error: a truncation all the same
                    raise BackendUnavailable("object body ended early")
            except (BotoCoreError, BackendUnavailable) as exc:
                self._failures += 1
                if self._failures > STREAM_RESUMES:
                    raise BackendUnavailable(f"object body broke {self._failures} times: {exc}") from exc
                log.info("resuming %s at byte %d after: %s", self._key, self._pos, exc)
                self._reopen()
                continue
            self._failures = 0
            self._pos += len(chunk)
            return chunk
        return b""

    def _reopen(self) -> None:
        self._body.close()
        condition = {"IfMatch": self._etag} if self._etag else {}
        with s3_errors(self._key):
            self._body = self._driver.client.get_object(
                Bucket=self._driver.bucket,
                Key=self._driver.object_key(self._key),
                Range=f"bytes={self._pos}-{self._end - 1}",
                **condition,
            )["Body"]

    def close(self) -> None:
        self._body.close()


class S3Driver(StorageDriver):
    def __init__(self, settings: S3Settings, session=None) -> None:
        """`session`: a boto3 session to make clients from; by default the driver makes its
        own (tests that make many drivers share one: loading boto3's models takes 0.2 s)."""
        self.settings = settings
        self.part_size = settings.part_size
        self._prefix = f"{settings.prefix}/" if settings.prefix else ""
        self._session = session
        self._client = None
        self._client_pid = None

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def client(self):
        # One client per process, made after gunicorn forks (and after gevent patched ssl).
        if self._client is None or self._client_pid != os.getpid():
            import boto3
            from botocore.config import Config

            config = Config(
                region_name=self.settings.region,
                signature_version="s3v4",
                max_pool_connections=self.settings.max_pool_connections,
                retries={"mode": "standard", "max_attempts": 4},
                connect_timeout=10,
                read_timeout=120,
                # R2 rejects the CRC32 aws-chunked trailers boto3 >= 1.36 sends by default.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path"},
            )
            if self._session is None:
                # Kept across forks: a process's client is new, the parsed API models are not.
                self._session = boto3.session.Session()
            self._client = self._session.client("s3", endpoint_url=self.settings.endpoint_url, config=config)
            self._client_pid = os.getpid()
        return self._client

    @property
    def bucket(self) -> str:
        return self.settings.bucket

    def object_key(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InvalidKey(key)
        return self._prefix + key

    # -- small objects -----------------------------------------------------------------------

    def read_bytes(self, key: str) -> bytes:
        return self.get_whole(key)[1]

    def get_whole(self, key: str) -> tuple[dict, bytes]:
        """A small object's response and whole body. boto3 retries a failed request, but not a
        body that breaks while it is read (a reset, a truncation): read the whole object
        again a few times before giving up."""
        from botocore.exceptions import BotoCoreError

        object_key = self.object_key(key)
        for attempt in range(SMALL_READ_ATTEMPTS):
            try:
                with s3_errors(key):
                    # Small objects carry a CRC32 (see write_bytes): botocore checks it as the
                    # body is read, so a corrupted read is read again rather than used.
                    response = self.client.get_object(
                        Bucket=self.bucket, Key=object_key, ChecksumMode="ENABLED"
                    )
                data = response["Body"].read()
                expected = response.get("ContentLength")
                if expected is not None and len(data) != int(expected):
                    raise BackendUnavailable(f"read {len(data)} of {expected} bytes")
                return response, data
            except (BotoCoreError, HTTPError, BackendUnavailable) as exc:
                if attempt == SMALL_READ_ATTEMPTS - 1:
                    raise BackendUnavailable(
                        f"reading {key} failed {SMALL_READ_ATTEMPTS} times: {exc}"
                    ) from exc
                log.info("reading %s again after: %s", key, exc)
                time.sleep(0.05 * 2**attempt * (0.5 + random.random()))  # noqa: S311 - jitter
        raise AssertionError("unreachable")

    def write_bytes(self, key: str, data: bytes) -> None:
        with s3_errors(key):
            self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data, **crc32(data))

    def size(self, key: str) -> int:
        with s3_errors(key):
            return int(self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))["ContentLength"])

    def stat(self, key: str) -> ObjectInfo:
        with s3_errors(key):
            head = self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        return ObjectInfo(key, int(head["ContentLength"]), head["LastModified"].timestamp(), head["ETag"])

    def walk(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.object_key(prefix) + "/"
        with s3_errors(prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base
            ):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        obj["Key"][len(self._prefix) :],
                        int(obj["Size"]),
                        obj["LastModified"].timestamp(),
                        obj.get("ETag", ""),
                    )

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> S3Reader:
        object_key = self.object_key(key)
        with s3_errors(key):
            if length == 0:
                self.client.head_object(Bucket=self.bucket, Key=object_key)
                return S3Reader(self, key, start, {"Body": _EmptyBody()})
            byte_range = f"bytes={start}-" if length is None else f"bytes={start}-{start + length - 1}"
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=object_key, Range=byte_range)
            except Exception as exc:
                if _is_invalid_range(exc):  # start at or past the end: an empty read
                    return S3Reader(self, key, start, {"Body": _EmptyBody()})
                raise
            return S3Reader(self, key, start, response)

    def list_children(self, prefix: str) -> list[str]:
        base = self.object_key(prefix) + "/"
        names: list[str] = []
        with s3_errors(prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/"
            ):
                names.extend(p["Prefix"][len(base) :].rstrip("/") for p in page.get("CommonPrefixes", []))
                names.extend(o["Key"][len(base) :] for o in page.get("Contents", []))
        return [n for n in names if n]

    def delete(self, key: str) -> None:
        with s3_errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def delete_prefix(self, prefix: str) -> None:
        base = self.object_key(prefix) + "/"
        with s3_errors(prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base
            ):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    def delete_many(self, keys: Iterable[str]) -> None:
        batch: list[str] = []
        for key in keys:
            batch.append(self.object_key(key))
            if len(batch) == DELETE_BATCH:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, object_keys: list[str]) -> None:
        with s3_errors(object_keys[0]):
            response = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in object_keys], "Quiet": True}
            )
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            raise StorageError(
                f"object store refused to delete {len(errors)} of {len(object_keys)} objects "
                f"({first.get('Code')} on {first.get('Key')})"
            )

    def pending_uploads(self) -> Iterator[PendingUpload]:
        with s3_errors(self._prefix or "(bucket)"):
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self._prefix
            ):
                for upload in page.get("Uploads", []):
                    yield PendingUpload(
                        upload["Key"][len(self._prefix) :],
                        upload["UploadId"],
                        upload["Initiated"].timestamp(),
                    )

    def pending_upload_ids(self, writer_state: dict[str, Any]) -> set[str]:
        # The writer's staging upload, and once sealed the copy's (storage/drivers/s3_writer.py).
        return {str(v) for v in (writer_state.get("mpu"), writer_state.get("copy_mpu")) if v}

    def abort_pending(self, upload: PendingUpload) -> None:
        try:
            with s3_errors(upload.key):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.object_key(upload.key), UploadId=upload.upload_id
                )
        except ObjectNotFound:
            pass  # completed or aborted meanwhile

    # -- uploads -----------------------------------------------------------------------------

    def append_writer(self, key: str, resume: dict[str, Any] | None = None, target: str | None = None):
        from storage.drivers.s3_writer import S3AppendWriter

        return S3AppendWriter(self, key, resume, target)

    @contextmanager
    def exclusive(self, key: str, wait: float = 0.0) -> Iterator[None]:
        from storage.drivers.s3_lease import Lease

        lease = Lease(self, key)
        lease.acquire(wait)
        try:
            yield
        finally:
            lease.release()

    def redirect_url(self, key: str, expires_in: int = 1200) -> str | None:
        if not self.settings.redirect_downloads:
            return None
        with s3_errors(key):
            return self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self.object_key(key)},
                ExpiresIn=expires_in,
            )

    def check(self) -> None:
        try:
            with s3_errors(""):
                self.client.head_bucket(Bucket=self.bucket)
        except ObjectNotFound:
            raise StorageError(f"bucket {self.bucket!r} does not exist") from None
        except StorageError as exc:
            raise StorageError(
                f"bucket {self.bucket!r} at {self.settings.endpoint_url or 'AWS'} is not usable: {exc}"
            ) from exc


class _EmptyBody:
    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _is_invalid_range(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code") == "InvalidRange"
