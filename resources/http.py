"""Request helpers shared by the resources: streaming bodies, ranges and pagination."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from urllib.parse import quote

from errors import BlobUploadInvalid, RangeInvalid, SizeInvalid, Unsupported
from serving.body import BodyError

READ_CHUNK = 1024 * 1024  # bounds memory per request; gunicorn reads up to this per recv
# Offsets of at most 19 digits (beyond any real size): longer ones are malformed, not a
# ValueError from int() (Python refuses to convert thousands of digits).
_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?(\d{1,19})-(\d{1,19})(?:/(?:\d{1,19}|\*))?")
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


def body_chunks(req) -> Iterator[bytes | memoryview]:
    """The request body in chunks of at most READ_CHUNK bytes, never all at once. A chunk may
    be a view of a buffer that the next one overwrites: use it before asking for the next.

    With Content-Length the body must be exactly that long; without one (chunked transfer
    encoding, de-chunked by the server) it runs to its end. `req.stream` is used rather than
    `bounded_stream`, which reads a chunked body as empty. Under Berth's gunicorn worker the
    stream has `views()`, which hands out the receive buffer itself (serving/body.py)."""
    length = req.content_length
    stream = req.stream
    views = getattr(stream, "views", None)
    if views is not None:
        yield from _checked_views(views(READ_CHUNK), length)
        return
    if length is None:
        while True:
            chunk = stream.read(READ_CHUNK)
            if not chunk:
                return
            yield chunk
    remaining = length
    while remaining > 0:
        chunk = stream.read(min(READ_CHUNK, remaining))
        if not chunk:
            raise BlobUploadInvalid("request body ended before Content-Length bytes")
        remaining -= len(chunk)
        yield chunk


def _checked_views(views: Iterator[memoryview], length: int | None) -> Iterator[memoryview]:
    received = 0
    try:
        for view in views:
            received += len(view)
            yield view
    except BodyError as exc:
        raise BlobUploadInvalid(str(exc)) from None
    if length is not None and received != length:
        raise BlobUploadInvalid("request body ended before Content-Length bytes")


def read_small_body(req, limit: int) -> bytes:
    """A body that must fit in memory (a manifest); 413 beyond `limit`."""
    if req.content_length is not None and req.content_length > limit:
        raise SizeInvalid(f"body larger than {limit} bytes", status=413)
    parts, total = [], 0
    for chunk in body_chunks(req):
        total += len(chunk)
        if total > limit:
            raise SizeInvalid(f"body larger than {limit} bytes", status=413)
        parts.append(bytes(chunk))  # the chunk may be a reused buffer
    return b"".join(parts)


def content_range(req) -> tuple[int, int] | None:
    """An upload chunk's `Content-Range: <start>-<end>` (inclusive), if given."""
    raw = req.get_header("Content-Range")
    if raw is None:
        return None
    match = _CONTENT_RANGE.fullmatch(raw.strip())
    if not match:
        raise RangeInvalid("malformed Content-Range", detail={"Content-Range": raw})
    start, end = int(match.group(1)), int(match.group(2))
    if end < start:
        raise RangeInvalid("Content-Range ends before it starts", detail={"Content-Range": raw})
    return start, end


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (start, length) a `Range: bytes=` header asks of a blob of `size` bytes; None to
    send it whole. Malformed or multi-range headers are ignored, as RFC 9110 allows; a range
    beyond the end, or ending before it starts, raises 416 with `Content-Range: bytes */size`."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip().replace(" ", ""))
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":
        length = min(int(last), size)
        if length == 0:
            raise _unsatisfiable(size)
        return size - length, length
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if last != "" and int(last) < start:
        raise _unsatisfiable(size)  # as the OCI conformance suite expects
    if start >= size:
        raise _unsatisfiable(size)
    return start, end - start + 1


def _unsatisfiable(size: int) -> RangeInvalid:
    return RangeInvalid(
        "requested range not satisfiable",
        headers={"Content-Range": f"bytes */{size}"},
        detail={"size": size},
    )


def page_size(req) -> int | None:
    """The `n` of a paginated listing: None when absent (everything), else a whole number >= 0."""
    raw_n = req.get_param("n")
    if raw_n is None or raw_n == "":
        return None
    try:
        n = int(raw_n)
    except ValueError:
        raise Unsupported("n must be a whole number", status=400, detail={"n": raw_n}) from None
    if n < 0:
        raise Unsupported("n must not be negative", status=400, detail={"n": raw_n})
    return n


def take_page(items: Iterable[str], req, path: str) -> tuple[list[str], str | None]:
    """`n` and `last` pagination over `items` (sorted, and already after `last` if the caller
    could skip cheaply); returns the page and a Link header. At most n + 1 items are taken
    from `items`, so a lazy source costs what the page holds."""
    last = req.get_param("last")
    if last:
        items = (i for i in items if i > last)
    n = page_size(req)
    if n is None:
        return list(items), None
    page = list(itertools.islice(items, n + 1))
    link = None
    if n > 0 and len(page) > n:
        page = page[:n]
        link = f'<{path}?n={n}&last={quote(page[-1], safe="/")}>; rel="next"'
    return page[:n], link
