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
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator
from typing import Any

from storage.driver import AppendWriter, ObjectNotFound, StorageError
from storage.s3 import READ_CHUNK, S3Driver, s3_errors

MAX_PARTS = 10_000
MAX_COPY_PART = 5 * 1024**3 - 5 * 1024**2  # R2's limit for one part or copied range


class S3AppendWriter(AppendWriter):
    def __init__(self, driver: S3Driver, key: str, resume: dict[str, Any] | None, target: str | None) -> None:
        self._driver = driver
        self._key = key  # staging key, e.g. uploads/<id>/data
        self._part_size = driver.part_size
        self._buffer = bytearray()
        self._completed_at: str | None = None  # where the finished object sits, once completed
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
            except (KeyError, TypeError, ValueError) as exc:
                raise StorageError("corrupt upload writer state") from exc
            if resume.get("part_size") != self._part_size:
                raise StorageError("REGISTRY_S3_PART_SIZE changed while this upload was open")
            if self._carry:
                self._buffer = bytearray(driver.read_bytes(self._carry))
                if len(self._buffer) != carry_len:
                    raise StorageError("upload carry object has the wrong size")
            if resume.get("previous_carry"):
                # The state we resume from was saved, so its predecessor's carry is garbage.
                driver.delete(str(resume["previous_carry"]))
        self._saved_mpu, self._saved_carry = self._mpu, self._carry

    @property
    def size(self) -> int:
        return len(self._parts) * self._part_size + len(self._buffer)

    def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= self._part_size:
            part = bytes(self._buffer[: self._part_size])
            del self._buffer[: self._part_size]
            self._upload_part(part)

    def _upload_part(self, data: bytes) -> None:
        if len(self._parts) >= MAX_PARTS:
            raise StorageError(
                f"blob larger than {MAX_PARTS} parts of {self._part_size} bytes: raise REGISTRY_S3_PART_SIZE"
            )
        client, bucket = self._driver.client, self._driver.bucket
        object_key = self._driver.object_key(self._mpu_key)
        with s3_errors(self._mpu_key):
            if self._mpu is None:
                self._mpu = client.create_multipart_upload(Bucket=bucket, Key=object_key)["UploadId"]
            etag = client.upload_part(
                Bucket=bucket, Key=object_key, UploadId=self._mpu, PartNumber=len(self._parts) + 1, Body=data
            )["ETag"]
        self._parts.append(etag)

    def state(self) -> dict[str, Any]:
        # The remainder goes to a new carry object each time: the saved state keeps pointing
        # at the old one until the caller replaces it, so a crash in between is safe. The old
        # carry is deleted by the next writer resumed from the new state (`previous_carry`).
        carry = None
        if self._buffer:
            carry = f"{self._key}.carry-{len(self._parts)}-{secrets.token_hex(4)}"
            self._driver.write_bytes(carry, bytes(self._buffer))
        previous = self._saved_carry if self._saved_carry != carry else None
        self._carry = carry
        return {
            "previous_carry": previous,
            "mpu_key": self._mpu_key,
            "mpu": self._mpu,
            "parts": list(self._parts),
            "carry": carry,
            "carry_len": len(self._buffer),
            "part_size": self._part_size,
        }

    def read_back(self) -> Iterator[bytes]:
        # Parts of an unfinished multipart upload cannot be read: finish it at the staging key
        # first (never at a final key: that would publish unverified bytes).
        if self._mpu is None and self._completed_at is None:
            yield bytes(self._buffer)
            return
        if self._mpu_key != self._key:
            raise StorageError("cannot read back an upload aimed at its final key")
        if self._completed_at is None:
            self._complete()
        reader = self._driver.open_range(self._key)
        try:
            while chunk := reader.read(READ_CHUNK):
                yield chunk
        finally:
            reader.close()

    def commit(self, final_key: str) -> None:
        if self._completed_at is None:
            if self._mpu is None:
                # Smaller than one part: a single small PUT.
                self._driver.write_bytes(final_key, bytes(self._buffer))
                self._buffer.clear()
                return
            self._complete()
        source = self._completed_at
        if source != final_key:
            self._copy(source, final_key)
            self._driver.delete(source)

    def _complete(self) -> None:
        if self._buffer:
            self._upload_part(bytes(self._buffer))  # the last part may be shorter
            self._buffer.clear()
        client, bucket = self._driver.client, self._driver.bucket
        with s3_errors(self._mpu_key):
            client.complete_multipart_upload(
                Bucket=bucket,
                Key=self._driver.object_key(self._mpu_key),
                UploadId=self._mpu,
                MultipartUpload={
                    "Parts": [{"ETag": e, "PartNumber": i + 1} for i, e in enumerate(self._parts)]
                },
            )
        self._mpu = None
        self._completed_at = self._mpu_key

    def _copy(self, source: str, target: str) -> None:
        """Server-side multipart copy in equal ranges (R2's rule holds for copies too)."""
        size = self._driver.size(source)
        client, bucket = self._driver.client, self._driver.bucket
        src = {"Bucket": bucket, "Key": self._driver.object_key(source)}
        dst = self._driver.object_key(target)
        piece = min(MAX_COPY_PART, max(self._part_size, math.ceil(size / MAX_PARTS)))
        with s3_errors(target):
            upload = client.create_multipart_upload(Bucket=bucket, Key=dst)["UploadId"]
            try:
                parts = []
                for number, start in enumerate(range(0, max(size, 1), piece), start=1):
                    end = min(start + piece, size) - 1
                    result = client.upload_part_copy(
                        Bucket=bucket,
                        Key=dst,
                        UploadId=upload,
                        PartNumber=number,
                        CopySource=src,
                        CopySourceRange=f"bytes={start}-{end}",
                    )
                    parts.append({"ETag": result["CopyPartResult"]["ETag"], "PartNumber": number})
                client.complete_multipart_upload(
                    Bucket=bucket, Key=dst, UploadId=upload, MultipartUpload={"Parts": parts}
                )
            except BaseException:
                client.abort_multipart_upload(Bucket=bucket, Key=dst, UploadId=upload)
                raise

    def abandon(self) -> None:
        # Parts past the saved state are overwritten by the next request; a multipart upload
        # or carry this writer created would be orphaned, so they go.
        if self._mpu is not None and self._mpu != self._saved_mpu:
            self._abort_mpu()
        if self._carry and self._carry != self._saved_carry:
            self._driver.delete(self._carry)
        self._buffer.clear()

    def _abort_mpu(self) -> None:
        try:
            with s3_errors(self._mpu_key):
                self._driver.client.abort_multipart_upload(
                    Bucket=self._driver.bucket, Key=self._driver.object_key(self._mpu_key), UploadId=self._mpu
                )
        except ObjectNotFound:
            pass
        self._mpu = None

    def abort(self) -> None:
        if self._mpu is not None:
            try:
                with s3_errors(self._mpu_key):
                    self._driver.client.abort_multipart_upload(
                        Bucket=self._driver.bucket,
                        Key=self._driver.object_key(self._mpu_key),
                        UploadId=self._mpu,
                    )
            except ObjectNotFound:
                pass
            self._mpu = None
        if self._carry:
            self._driver.delete(self._carry)
            self._carry = None
        if self._completed_at == self._key:
            self._driver.delete(self._key)
        self._buffer.clear()
