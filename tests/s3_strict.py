"""R2's multipart rules, checked on every multipart upload a boto3 client completes.

moto accepts parts of any size; R2 refuses, at CompleteMultipartUpload, an upload whose
non-trailing parts differ in size or whose last part is larger than the others. This records
each part's size through botocore's event hooks and fails the completion the way R2 would."""

from __future__ import annotations

from collections import defaultdict

MIN_PART = 5 * 1024 * 1024


class R2RuleViolation(AssertionError):
    pass


class R2StrictChecker:
    def __init__(self) -> None:
        self.parts: dict[str, dict[int, int]] = defaultdict(dict)
        self.completed: list[list[int]] = []  # part sizes of each completed upload

    def attach(self, client) -> None:
        events = client.meta.events
        events.register("provide-client-params.s3.UploadPart", self._on_part)
        events.register("provide-client-params.s3.UploadPartCopy", self._on_copy)
        events.register("provide-client-params.s3.CompleteMultipartUpload", self._on_complete)

    def _on_part(self, params, **_):
        body = params["Body"]
        self.parts[params["UploadId"]][params["PartNumber"]] = len(body)

    def _on_copy(self, params, **_):
        start, end = params["CopySourceRange"].removeprefix("bytes=").split("-")
        self.parts[params["UploadId"]][params["PartNumber"]] = int(end) - int(start) + 1

    def _on_complete(self, params, **_):
        recorded = self.parts.pop(params["UploadId"], {})
        numbers = [p["PartNumber"] for p in params["MultipartUpload"]["Parts"]]
        if numbers != list(range(1, len(numbers) + 1)):
            raise R2RuleViolation(f"parts not numbered 1..n: {numbers}")
        sizes = [recorded[n] for n in numbers]
        check_part_sizes(sizes)
        self.completed.append(sizes)


def check_part_sizes(sizes: list[int], min_part: int = MIN_PART) -> None:
    if not sizes:
        raise R2RuleViolation("no parts")
    head, last = sizes[:-1], sizes[-1]
    if head and len(set(head)) != 1:
        raise R2RuleViolation(f"All non-trailing parts must have the same length: {sizes}")
    if head and head[0] < min_part:
        raise R2RuleViolation(f"parts smaller than 5 MiB: {sizes}")
    if head and last > head[0]:
        raise R2RuleViolation(f"last part larger than the others: {sizes}")
