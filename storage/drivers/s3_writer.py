"""Uploads into S3 multipart uploads that obey R2's rules whatever the client's chunking.

R2 requires every part but the last to have the same size, and the last to be no larger.
Clients send whatever chunks they like (docker one long stream, others many small PATCHes), so
the writer re-cuts the stream into parts of exactly `part_size` bytes. What is left over at the
end of a request (less than a part) is saved as a small "carry" object beside the upload and
prepended to the next request's bytes, so any process on any instance can continue. Memory per
request: at most about one part.

The multipart upload targets a staging key; finishing it completes the upload and, when the
final key differs, copies it server-side with UploadPartCopy in equal ranges (an object over
5 GiB cannot be copied in one request). When the final key is known up front (the digest came
with the first byte), the multipart upload targets it directly and nothing is copied. Either way
the object is invisible until CompleteMultipartUpload, which only runs after the digest checked.

Finishing is resumable: `seal()` uploads the last part and opens the copy's multipart upload,
and the upload service saves that state before `commit()` completes anything. A commit cut short
is finished by a writer resumed from it: a CompleteMultipartUpload that already happened (the
store answers NoSuchUpload, and the object is there with the sealed size) is taken as done, and
the copy goes again into the recorded multipart upload (copying a part twice is harmless).

Each part is uploaded in the background (a greenlet under gevent) while the request goes on
reading the next one: at most one part in flight and one being filled, so pushes take about the
longer of reading and uploading rather than their sum, and memory stays at about two parts.
"""

from __future__ import annotations

import math
import secrets
import threading
from collections.abc import Iterator
from typing import Any

from storage.driver import AppendWriter, ObjectNotFound, StorageError
from storage.drivers.s3 import READ_CHUNK, S3Driver, log, s3_errors

MAX_PARTS = 10_000
MAX_COPY_PART = 5 * 1024**3 - 5 * 1024**2  # R2's limit for one part or copied range


class S3AppendWriter(AppendWriter):
    def __init__(self, driver: S3Driver, key: str, resume: dict[str, Any] | None, target: str | None) -> None:
        self._driver = driver
        self._key = key  # staging key, e.g. uploads/<id>/data
        self._part_size = driver.part_size
        # Bytes received but not yet in a part, as the pieces they came in (memoryviews of
        # bytes objects): a piece is copied into its part, and once more on arrival if it came
        # as a view of the receive buffer.
        self._pending: list[bytes | memoryview] = []
        self._pending_len = 0
        self._inflight: _PartUpload | None = None
        # Set by seal(): the total size, and the copy to the final key with its multipart upload.
        self._sealed_size: int | None = None
        self._copy_to: str | None = None
        self._copy_mpu: str | None = None
        if resume is None:
            self._mpu_key = target or key
            self._mpu: str | None = None
            self._parts: list[str] = []
            self._carry: str | None = None
        else:
            try:
                self._mpu_key = str(resume["mpu_key"])
                self._mpu = resume["mpu"]
                self._parts = [str(e) for e in resume["parts"]]
                self._carry = resume["carry"]
                carry_len = int(resume["carry_len"])
                if resume.get("sealed_size") is not None:
                    self._sealed_size = int(resume["sealed_size"])
                    self._copy_to = resume.get("copy_to")
                    self._copy_mpu = resume.get("copy_mpu")
            except (KeyError, TypeError, ValueError) as exc:
                raise StorageError("corrupt upload writer state") from exc
            if resume.get("part_size") != self._part_size:
                raise StorageError("REGISTRY_S3_PART_SIZE changed while this upload was open")
            if self._carry:
                carried = driver.read_bytes(self._carry)
                if len(carried) != carry_len:
                    raise StorageError("upload carry object has the wrong size")
                self._pending, self._pending_len = [carried], len(carried)
            if resume.get("previous_carry"):
                # The state we resume from was saved, so its predecessor's carry is garbage.
                driver.delete(str(resume["previous_carry"]))
        self._saved_mpu, self._saved_carry, self._saved_copy_mpu = self._mpu, self._carry, self._copy_mpu

    @property
    def size(self) -> int:
        if self._sealed_size is not None:
            return self._sealed_size
        parts = len(self._parts) + (1 if self._inflight is not None else 0)
        return parts * self._part_size + self._pending_len

    def write(self, data: bytes | memoryview) -> None:
        if not data:
            return
        if not isinstance(data, bytes):
            data = bytes(data)  # a view of the receive buffer, reused once this returns
        self._pending.append(memoryview(data))
        self._pending_len += len(data)
        while self._pending_len >= self._part_size:
            self._start_part(self._take(self._part_size))

    def _take(self, n: int) -> bytes:
        """The first `n` pending bytes as one object (the one copy)."""
        pieces, size = [], 0
        while size < n:
            piece = self._pending.pop(0)
            if size + len(piece) > n:
                keep = n - size
                self._pending.insert(0, memoryview(piece)[keep:])
                piece = memoryview(piece)[:keep]
            pieces.append(piece)
            size += len(piece)
        self._pending_len -= n
        return b"".join(pieces)

    def _remainder(self) -> bytes:
        return b"".join(self._pending)

    def _start_part(self, data: bytes) -> None:
        self._finish_inflight()
        if len(self._parts) >= MAX_PARTS:
            raise StorageError(
                f"blob larger than {MAX_PARTS} parts of {self._part_size} bytes: raise REGISTRY_S3_PART_SIZE"
            )
        if self._mpu is None:
            self._mpu = self._create_mpu(self._mpu_key)
        self._inflight = _PartUpload(self._driver, self._mpu_key, self._mpu, len(self._parts) + 1, data)

    def _finish_inflight(self) -> None:
        """Wait for the part in flight; its failure is the request's failure."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            self._parts.append(inflight.result())

    def _drop_inflight(self) -> None:
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            inflight.join()

    def state(self) -> dict[str, Any]:
        # The remainder goes to a new carry object each time: the saved state keeps pointing
        # at the old one until the caller replaces it, so a crash in between is safe. The old
        # carry is deleted by the next writer resumed from the new state (`previous_carry`).
        self._finish_inflight()
        carry = None
        if self._pending_len:
            carry = f"{self._key}.carry-{len(self._parts)}-{secrets.token_hex(4)}"
            self._driver.write_bytes(carry, self._remainder())
        previous = self._saved_carry if self._saved_carry != carry else None
        self._carry = carry
        return {
            "previous_carry": previous,
            "mpu_key": self._mpu_key,
            "mpu": self._mpu,
            "parts": list(self._parts),
            "carry": carry,
            "carry_len": self._pending_len,
            "part_size": self._part_size,
        }

    def seal(self, final_key: str) -> dict[str, Any] | None:
        self._finish_inflight()
        if self._mpu is None:
            return None  # under one part: the commit is a single PUT of the bytes held here
        size = self.size
        if self._pending_len:
            self._start_part(self._take(self._pending_len))  # the last part may be shorter
            self._finish_inflight()
        self._sealed_size = size
        if final_key != self._mpu_key:
            self._copy_to = final_key
            self._copy_mpu = self._create_mpu(final_key)
        previous, self._carry = self._saved_carry, None  # its bytes are in the last part now
        return {
            "previous_carry": previous,
            "mpu_key": self._mpu_key,
            "mpu": self._mpu,
            "parts": list(self._parts),
            "carry": None,
            "carry_len": 0,
            "part_size": self._part_size,
            "sealed_size": size,
            "copy_to": self._copy_to,
            "copy_mpu": self._copy_mpu,
        }

    def read_back(self) -> Iterator[bytes]:
        # Parts of an unfinished multipart upload cannot be read: finish it at the staging key
        # first (never at a final key: that would publish unverified bytes).
        self._finish_inflight()
        if self._mpu is None and self._sealed_size is None:
            yield self._remainder()
            return
        if self._mpu_key != self._key:
            raise StorageError("cannot read back an upload aimed at its final key")
        if self._sealed_size is None:
            self.seal(self._key)
        self._complete()
        reader = self._driver.open_range(self._key)
        try:
            while chunk := reader.read(READ_CHUNK):
                yield chunk
        finally:
            reader.close()

    def commit(self, final_key: str) -> None:
        self._finish_inflight()
        if self._sealed_size is None:
            if self._mpu is None:
                # Smaller than one part: a single small PUT.
                self._driver.write_bytes(final_key, self._remainder())
                self._pending, self._pending_len = [], 0
                return
            self.seal(final_key)
        self._complete()
        if final_key == self._mpu_key:
            return
        recorded = self._copy_mpu if self._copy_to == final_key else None
        self._copy(self._mpu_key, final_key, recorded)
        try:
            self._driver.delete(self._mpu_key)
        except StorageError as exc:
            # The staging object lies under the upload, which goes when the session ends.
            log.warning("could not delete %s after copying it: %s", self._mpu_key, exc)

    def _create_mpu(self, key: str) -> str:
        client, bucket, object_key = self._driver.client, self._driver.bucket, self._driver.object_key(key)
        with s3_errors(key):
            upload = client.create_multipart_upload(Bucket=bucket, Key=object_key)["UploadId"]
        if key == self._key:
            self._abort_others(key, upload)
        return upload

    def _abort_others(self, key: str, ours: str) -> None:
        """The staging key belongs to this upload, and only the lease holder writes it: any
        other multipart upload there is an orphan (made by a request that died before saving
        it, or a second time by boto3 retrying a CreateMultipartUpload whose answer was lost)."""
        object_key = self._driver.object_key(key)
        try:
            with s3_errors(key):
                found = self._driver.client.list_multipart_uploads(
                    Bucket=self._driver.bucket, Prefix=object_key
                ).get("Uploads", [])
        except StorageError as exc:
            log.warning("could not look for orphaned multipart uploads of %s: %s", key, exc)
            return
        for upload in found:
            if upload["Key"] == object_key and upload["UploadId"] != ours:
                self._abort_quietly(key, upload["UploadId"])

    def _complete(self) -> None:
        """Complete the sealed multipart upload; one that was already completed (before a
        crash, or by an attempt whose response was lost) is done, not an error."""
        if self._mpu is None:
            return
        client, bucket = self._driver.client, self._driver.bucket
        parts = [{"ETag": e, "PartNumber": i + 1} for i, e in enumerate(self._parts)]
        try:
            with s3_errors(self._mpu_key):
                client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self._driver.object_key(self._mpu_key),
                    UploadId=self._mpu,
                    MultipartUpload={"Parts": parts},
                )
        except ObjectNotFound:
            if not self._holds_sealed_object(self._mpu_key):
                raise StorageError(f"multipart upload of {self._mpu_key} is gone") from None
        self._mpu = None

    def _holds_sealed_object(self, key: str) -> bool:
        try:
            return self._driver.size(key) == self._sealed_size
        except ObjectNotFound:
            return False

    def _copy(self, source: str, target: str, upload: str | None) -> None:
        """Server-side multipart copy in equal ranges (R2's rule holds for copies too), into the
        recorded multipart upload `upload` if there is one (left open on failure: the upload's
        session refers to it), else into a new one (aborted on failure)."""
        size = self._sealed_size if self._sealed_size is not None else self._driver.size(source)
        piece = min(MAX_COPY_PART, max(self._part_size, math.ceil(size / MAX_PARTS)))
        for attempt in range(2):
            fresh = upload is None
            if fresh:
                upload = self._create_mpu(target)
            try:
                self._copy_into(source, target, upload, size, piece)
                return
            except _UploadGone:
                if self._holds_sealed_object(target):
                    return  # an earlier attempt completed the copy
                if fresh or attempt:
                    raise StorageError(f"multipart copy to {target} vanished") from None
                upload = None  # the recorded one is gone: copy into a new one
            except BaseException:
                if fresh:
                    self._abort_quietly(target, upload)
                raise

    def _copy_into(self, source: str, target: str, upload: str, size: int, piece: int) -> None:
        from botocore.exceptions import ClientError

        client, bucket = self._driver.client, self._driver.bucket
        src = {"Bucket": bucket, "Key": self._driver.object_key(source)}
        dst = self._driver.object_key(target)
        parts = []
        try:
            with s3_errors(target):
                for number, start in enumerate(range(0, max(size, 1), piece), start=1):
                    end = min(start + piece, size) - 1
                    result = client.upload_part_copy(
                        Bucket=bucket, Key=dst, UploadId=upload, PartNumber=number,
                        CopySource=src, CopySourceRange=f"bytes={start}-{end}",
                    )  # fmt: skip
                    parts.append({"ETag": result["CopyPartResult"]["ETag"], "PartNumber": number})
                client.complete_multipart_upload(
                    Bucket=bucket, Key=dst, UploadId=upload, MultipartUpload={"Parts": parts}
                )
        except StorageError as exc:
            cause = exc.__cause__
            if (
                isinstance(cause, ClientError)
                and cause.response.get("Error", {}).get("Code") == "NoSuchUpload"
            ):
                raise _UploadGone from exc
            raise

    def _abort_quietly(self, key: str, upload: str) -> None:
        try:
            self._abort(key, upload)
        except StorageError as exc:
            log.warning("could not abort multipart upload %s of %s: %s", upload, key, exc)

    def _abort(self, key: str, upload: str) -> None:
        try:
            with s3_errors(key):
                self._driver.client.abort_multipart_upload(
                    Bucket=self._driver.bucket, Key=self._driver.object_key(key), UploadId=upload
                )
        except ObjectNotFound:
            pass  # completed or aborted already

    def abandon(self) -> None:
        # Parts past the saved state are overwritten by the next request; a multipart upload
        # or carry this writer created would be orphaned, so they go.
        self._drop_inflight()
        if self._mpu is not None and self._mpu != self._saved_mpu:
            self._abort_quietly(self._mpu_key, self._mpu)
            self._mpu = None
        if self._copy_mpu is not None and self._copy_mpu != self._saved_copy_mpu and self._copy_to:
            self._abort_quietly(self._copy_to, self._copy_mpu)
            self._copy_mpu = None
        if self._carry and self._carry != self._saved_carry:
            self._driver.delete(self._carry)
        self._pending, self._pending_len = [], 0

    def abort(self) -> None:
        self._drop_inflight()
        if self._mpu is not None:
            self._abort(self._mpu_key, self._mpu)
            self._mpu = None
        if self._copy_mpu is not None and self._copy_to:
            self._abort(self._copy_to, self._copy_mpu)
            self._copy_mpu = None
        if self._carry:
            self._driver.delete(self._carry)
            self._carry = None
        if self._mpu_key == self._key:
            self._driver.delete(self._key)  # a staging object completed for a read-back
        self._pending, self._pending_len = [], 0


class _UploadGone(Exception):
    """The multipart upload a copy went into no longer exists (completed or aborted)."""


class _PartUpload:
    """One UploadPart running beside the request (a thread: a greenlet under gevent)."""

    def __init__(self, driver: S3Driver, key: str, upload_id: str, number: int, data: bytes) -> None:
        self._etag: str | None = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                with s3_errors(key):
                    self._etag = driver.client.upload_part(
                        Bucket=driver.bucket, Key=driver.object_key(key), UploadId=upload_id,
                        PartNumber=number, Body=data,
                    )["ETag"]  # fmt: skip
            except BaseException as exc:  # handed to the request that waits for it
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"s3-part-{number}", daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._etag is not None
        return self._etag
