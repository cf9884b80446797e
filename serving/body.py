"""Request bodies read straight from the socket into one reusable buffer.

gunicorn's body readers hand the application `bytes`: every piece is received into a new
object, then copied through one BytesIO in the chunked decoder and another in `Body.read`, and
sliced again at each boundary. For a registry receiving multi-GiB layers that copying costs
about as much CPU as hashing the data. Here the body is received with `recv_into` into one
buffer per request, chunked framing is parsed in place, and the application can take the
payload as memoryviews of that buffer (`SocketBody.views`): each byte is copied once, by the
kernel. `read()` still works (it is `wsgi.input`).

Framing rules follow gunicorn's ChunkedReader (RFC 9112 section 7.1): hex sizes, chunk
extensions checked with gunicorn's own pattern, bounded size lines and trailer sections, CRLF
after every chunk. Bytes read past the end of a chunked body (a pipelined next request) go
back to gunicorn's unreader.

This module is imported by the gunicorn master (through the worker class): standard library,
gunicorn and serving/ only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from time import monotonic

from gunicorn.http.body import (
    CHUNK_EXT_RE,
    DEFAULT_MAX_CHUNK_SIZE_LINE,
    DEFAULT_MAX_TRAILER_SECTION,
    Body,
    ChunkedReader,
    LengthReader,
)

from serving.errors import ClientTooSlow
from serving.limits import ServerLimits
from serving.pace import Pace

BUFFER_SIZE = 1024 * 1024  # the most a request body's buffer grows to, whatever the body's size
INITIAL_BUFFER_SIZE = 64 * 1024  # enough for a manifest or a small layer in a few receives
GROW_AFTER = 4  # the buffer grows 4x once 4 times its size has been received
BATCH = 256 * 1024  # the least handed to the app at once, unless the body ends first
_HEX = re.compile(rb"[0-9a-fA-F]+")
_CRLF = b"\r\n"


class BodyError(ValueError):
    """The request body is malformed, ends early, or the connection failed while reading it."""


class SocketBodyReader:
    """The payload of one request body, parsed from the socket in place.

    Nothing is allocated and nothing is read until the application asks for the body, which
    it only does once the request is authorised: a refused request costs no buffer (and its
    connection is closed rather than drained, see serving/worker.py). The buffer starts small
    and grows as the body proves large, up to BUFFER_SIZE. Every receive waits only as long as
    the client keeps sending at least BERTH_MIN_RATE over each BERTH_BODY_TIMEOUT period."""

    def __init__(
        self, sock, unreader, length: int | None, line_limit: int, trailer_limit: int, limits: ServerLimits
    ) -> None:
        self._sock = sock
        self._unreader = unreader
        self._length = length
        self._chunked = length is None
        self._left = 0 if length is None else length  # in the body, or in the current chunk
        self._done = length == 0
        self._after_chunk = False  # a chunk's payload ended: its CRLF comes next
        self._line_limit = line_limit
        self._trailer_limit = trailer_limit
        self._limits = limits
        self._pace: Pace | None = None  # set with the buffer, when the body is first read
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self._received = 0
        self.payload_bytes = 0  # body bytes handed to the application (for the access log)
        self._released = False
        self.send_continue = False  # the client waits for "100 Continue" before sending the body

    @property
    def done(self) -> bool:
        """The whole body has been read from the connection."""
        return self._done

    def release(self) -> None:
        """The request is over: let the buffer go now. gunicorn's request and its body refer to
        each other, so without this the buffer would live until the garbage collector's next
        full pass, which under steady traffic can be minutes: 100 finished uploads kept 100 MiB."""
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self._released = True

    def _start_reading(self) -> None:
        if self.send_continue:
            try:
                self._sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            except OSError as exc:
                raise BodyError(f"connection failed before the request body: {exc}") from exc
        # What gunicorn read past the headers is the start of the body.
        held = self._unreader.take_buffered()
        length = self._length
        if length is not None and len(held) > length:
            self._unreader.unread(held[length:])  # a pipelined next request
            held = held[:length]
        size = INITIAL_BUFFER_SIZE if length is None else min(INITIAL_BUFFER_SIZE, length)
        self._buf = bytearray(max(size, len(held)))
        self._view = memoryview(self._buf)
        self._end = len(held)
        self._view[: len(held)] = held
        self._pace = Pace(self._limits.body_timeout, self._limits.min_rate, "receiving the request body")

    def next_span(self, limit: int) -> memoryview | None:
        """The next at most `limit` payload bytes, as a view into the buffer that stays valid
        only until the next call; None once the body has ended."""
        span = self._next_span(limit)
        if span is not None:
            self.payload_bytes += len(span)
        return span

    def _next_span(self, limit: int) -> memoryview | None:
        """next_span without the count.

        Views are at least min(BATCH, limit) bytes unless the body ends first: when the client
        is slower than Berth, each recv() returns a few KiB, and handing each out would cost a
        hash call, a write() and a trip through the event loop per few KiB. Until the body has
        ended more bytes are bound to come, so waiting for them never blocks past its end."""
        if self._done:
            return None
        if self._pace is None:
            self._start_reading()
        if self._chunked:
            return self._chunked_span(limit)
        if self._start == self._end:
            self._start = self._end = 0
        goal = min(BATCH, limit, self._left)
        while self._end - self._start < goal:
            if self._end == len(self._buf):  # no room after the unread bytes: move them first
                self._compact()
                if self._end == len(self._buf):  # a full buffer holds less than a batch
                    self._grow(force=True)
            # never past the body's end: what follows it is the next request's
            self._receive(min(len(self._buf) - self._end, self._left - (self._end - self._start)))
        n = min(self._left, self._end - self._start, limit)
        span = self._view[self._start : self._start + n]
        self._start += n
        self._left -= n
        if self._left == 0:
            self._finish()
        return span

    def _chunked_span(self, limit: int) -> memoryview | None:
        # Clients send chunks of 8-64 KiB. Handing each to the app separately would cost a
        # hash call and a write() per chunk, so the payloads of the chunks in the buffer are
        # moved together over the framing between them (a memmove) and handed out as one view.
        goal = min(BATCH, limit)
        out = produced = 0
        while produced < limit and not self._done:
            if produced == 0:
                out = self._start  # nothing handed out yet: the output starts here
            if self._left == 0:
                if self._parse_chunk_header():
                    continue
                if produced == 0:
                    self._receive_more()  # moves the partial header to the front first
                elif produced < goal and (self._end < len(self._buf) or self._grow(force=True)):
                    self._receive(len(self._buf) - self._end)
                else:
                    break  # hand out what is here; the partial header stays for next time
                continue
            if self._start == self._end:
                if produced == 0:
                    self._start = self._end = out = 0
                elif produced >= goal or (self._end == len(self._buf) and not self._grow(force=True)):
                    break
                self._receive(len(self._buf) - self._end)
                continue
            n = min(self._left, self._end - self._start, limit - produced)
            write_at = out + produced
            if write_at != self._start:
                self._view[write_at : write_at + n] = self._view[self._start : self._start + n]
            self._start += n
            self._left -= n
            produced += n
            self._after_chunk = self._left == 0
        return self._view[out : out + produced] if produced else None

    def read(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            span = self.next_span(size - len(out))
            if span is None:
                break
            out += span
        return bytes(out)

    def _receive(self, n: int) -> None:
        """Append up to `n` bytes from the socket after the buffered ones."""
        if self._released:
            raise BodyError("the request is over")
        if self._received >= GROW_AFTER * len(self._buf):
            self._grow()  # the body proves large: receive (and hand out) more at a time
        sock, pace = self._sock, self._pace
        started = monotonic()
        try:
            sock.settimeout(pace.remaining())
            got = sock.recv_into(self._view[self._end : self._end + n])
            if got == 0:
                raise BodyError("request body ended early")
            pace.waited(monotonic() - started, got)
        except ClientTooSlow as exc:
            raise BodyError(str(exc)) from None
        except TimeoutError:  # silent for the rest of the period
            try:
                pace.expired()
            except ClientTooSlow as exc:
                raise BodyError(str(exc)) from None
        except OSError as exc:
            raise BodyError(f"connection failed while reading the request body: {exc}") from exc
        self._end += got
        self._received += got

    def _receive_more(self) -> None:
        """Receive more of an incomplete chunk header, keeping its first bytes (moved to the
        front of the buffer). The header parser bounds how long a header may grow."""
        if self._end - self._start == len(self._buf) and not self._grow(force=True):
            raise BodyError("chunk framing larger than the receive buffer")
        self._compact()
        self._receive(len(self._buf) - self._end)

    def _grow(self, force: bool = False) -> bool:
        """A buffer four times larger (at most BUFFER_SIZE, or the body's length), with every
        byte at the same offset, so positions into it stay valid. Views handed out before are
        only valid until the next call anyway."""
        cap = BUFFER_SIZE if self._length is None else min(BUFFER_SIZE, self._length)
        size = min(cap, 4 * len(self._buf))
        if size <= len(self._buf):
            return False
        if not force and self._received < GROW_AFTER * len(self._buf):
            return False
        grown = bytearray(size)
        grown[: self._end] = self._view[: self._end]
        self._buf, self._view = grown, memoryview(grown)
        return True

    def _finish(self) -> None:
        self._done = True
        self._sock.settimeout(None)  # the body's deadline does not apply to what follows

    def _compact(self) -> None:
        """Move the unconsumed bytes to the front of the buffer, making room after them."""
        pending = self._end - self._start
        if self._start:
            self._view[:pending] = self._view[self._start : self._end]
            self._start, self._end = 0, pending

    def _parse_chunk_header(self) -> bool:
        """Parse the framing between two chunks' payloads if it is all in the buffer: the CRLF
        ending the previous chunk, the size line and, after the last chunk, the trailer section.
        Returns False, having consumed nothing, when more bytes are needed."""
        buf, pos, end = self._buf, self._start, self._end
        if self._after_chunk:
            if end - pos < 2:
                return False
            if buf[pos : pos + 2] != _CRLF:
                raise BodyError("chunk not followed by CRLF")
            pos += 2
        line_end = buf.find(_CRLF, pos, end)
        if line_end < 0:
            if end - pos > self._line_limit:
                raise BodyError(f"chunk size line longer than {self._line_limit} bytes")
            return False
        size, semicolon, extension = bytes(buf[pos:line_end]).partition(b";")
        if semicolon:
            size = size.rstrip(b" \t")
            if b"\r" in extension or not CHUNK_EXT_RE.fullmatch(b";" + extension):
                raise BodyError("invalid chunk extension")
        if not _HEX.fullmatch(size):
            raise BodyError("invalid chunk size")
        size_value = int(size, 16)
        pos = line_end + 2
        if size_value == 0:
            body_end = self._trailers_end(pos)
            if body_end < 0:
                return False
            if body_end < end:
                self._unreader.unread(bytes(buf[body_end:end]))  # a pipelined next request
            self._start = self._end = body_end
            self._finish()
        else:
            self._start, self._left = pos, size_value
        self._after_chunk = False
        return True

    def _trailers_end(self, pos: int) -> int:
        """Where the trailer section starting at `pos` ends (Berth uses no trailers: they are
        skipped), or -1 if it is not all in the buffer yet."""
        end = self._end
        if end - pos >= 2 and self._buf[pos : pos + 2] == _CRLF:
            return pos + 2
        found = self._buf.find(b"\r\n\r\n", pos, end)
        if found >= 0:
            return found + 4
        if end - pos > self._trailer_limit:
            raise BodyError(f"trailer section longer than {self._trailer_limit} bytes")
        return -1


class SocketBody(Body):
    """`wsgi.input` for a request with a body: gunicorn's Body over a SocketBodyReader, plus
    `views()` for callers that can take transient memoryviews."""

    reader: SocketBodyReader

    def __init__(self, reader: SocketBodyReader, request) -> None:
        super().__init__(reader)
        self._request = request
        self.error: Exception | None = None  # why reading the body failed, for the server's log

    def _fail(self, exc: Exception) -> None:
        # Where the next request starts on the connection is unknown: answer this one with
        # `Connection: close` and close.
        self.failed = True
        self.error = exc
        self._request.force_close()

    def _read_reader(self, size):
        try:
            return self.reader.read(size)
        except Exception as exc:
            self._fail(exc)
            raise

    def views(self, limit: int) -> Iterator[memoryview]:
        """The rest of the body as memoryviews of at most `limit` bytes. Each view is valid
        only until the next one is requested: use it (hash it, write it) and let it go."""
        held = self.buf.getvalue()  # anything an earlier read() kept back
        if held:
            self.buf.seek(0)
            self.buf.truncate()
            yield memoryview(held)
        while True:
            try:
                span = self.reader.next_span(limit)
            except Exception as exc:
                self._fail(exc)
                raise
            if span is None:
                return
            yield span


def install(req, sock, limits: ServerLimits) -> None:
    """Swap gunicorn's reader for the request's body, if it has one, before the app sees it."""
    body = getattr(req, "body", None)
    reader = getattr(body, "reader", None)
    if isinstance(reader, ChunkedReader):
        length = None
    elif isinstance(reader, LengthReader) and reader.length > 0:
        length = reader.length
    else:
        return
    line_limit = getattr(req, "limit_request_field_size", 0) or DEFAULT_MAX_CHUNK_SIZE_LINE
    trailer_limit = getattr(req, "max_buffer_headers", 0) or DEFAULT_MAX_TRAILER_SECTION
    reader = SocketBodyReader(sock, req.unreader, length, line_limit, trailer_limit, limits)
    # A client that sent `Expect: 100-continue` waits for "100 Continue" before sending its
    # body. gunicorn sends it before the app runs; it is sent here on the first read instead,
    # that is once the request is authorised, so a refused client never sends its body.
    # (gunicorn's flag is private; were it renamed, gunicorn would just answer early again.)
    reader.send_continue = getattr(req, "_expected_100_continue", False)
    req._expected_100_continue = False
    req.body = SocketBody(reader, req)


def release(req) -> None:
    """Free the request's receive buffer (see SocketBodyReader.release)."""
    body = getattr(req, "body", None)
    if isinstance(body, SocketBody):
        body.reader.release()


def payload_bytes(req) -> int:
    """Body bytes of the request the application has read."""
    body = getattr(req, "body", None)
    return body.reader.payload_bytes if isinstance(body, SocketBody) else 0


def left_unread(req) -> bool:
    """The request's body has not been read to its end: the connection cannot serve another
    request without draining it first."""
    body = getattr(req, "body", None)
    return isinstance(body, SocketBody) and not body.reader.done
