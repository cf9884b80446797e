"""serving/body.py: request bodies parsed in place from the socket, against scripted sockets
that hand data over in arbitrary pieces (as TCP does)."""

from __future__ import annotations

import random

import pytest
from gunicorn.http.unreader import IterUnreader

from serving.body import BATCH, BUFFER_SIZE, BodyError, SocketBody, SocketBodyReader
from serving.limits import ServerLimits

LINE_LIMIT, TRAILER_LIMIT = 8190, 8190 * 32
LIMITS = ServerLimits()


class ScriptedSocket:
    """recv_into hands out `data` in pieces of the given sizes (cycled), then EOF."""

    def __init__(self, data: bytes, pieces: list[int] | None = None, error: OSError | None = None) -> None:
        self._data, self._pos = data, 0
        self._pieces = pieces or [len(data) or 1]
        self._turn = 0
        self._error = error
        self.calls = 0

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def recv_into(self, view, nbytes: int = 0) -> int:
        self.calls += 1
        if self._pos == len(self._data) and self._error is not None:
            raise self._error
        n = min(len(view), self._pieces[self._turn % len(self._pieces)], len(self._data) - self._pos)
        self._turn += 1
        view[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def chunked(payload: bytes, sizes: list[int], trailer: bytes = b"", ext: bytes = b"") -> bytes:
    out, pos, turn = bytearray(), 0, 0
    while pos < len(payload):
        n = sizes[turn % len(sizes)]
        turn += 1
        piece = payload[pos : pos + n]
        out += b"%x%s\r\n" % (len(piece), ext) + piece + b"\r\n"
        pos += n
    return bytes(out + b"0\r\n" + trailer + b"\r\n")


def reader(wire: bytes, length: int | None, held: bytes = b"", pieces: list[int] | None = None):
    unreader = IterUnreader([])
    if held:
        unreader.unread(held)
    sock = ScriptedSocket(wire, pieces)
    return SocketBodyReader(sock, unreader, length, LINE_LIMIT, TRAILER_LIMIT, LIMITS), unreader, sock


class FakeRequest:
    must_close = False

    def force_close(self) -> None:
        self.must_close = True


def drain(r: SocketBodyReader, limit: int = BUFFER_SIZE) -> bytes:
    out = bytearray()
    while (span := r.next_span(limit)) is not None:
        assert 0 < len(span) <= limit
        out += span
    return bytes(out)


PAYLOAD = random.Random(7).randbytes(3 * BUFFER_SIZE + 12345)


@pytest.mark.parametrize("sizes", [[1], [7, 3], [8192], [32768], [65536, 100], [BUFFER_SIZE * 2]])
@pytest.mark.parametrize("pieces", [[1], [5, 3000], [65536], [10 * BUFFER_SIZE]])
def test_chunked_body_comes_out_whole_whatever_the_chunking_and_the_tcp_pieces(sizes, pieces):
    payload = PAYLOAD if sizes[0] > 100 and pieces[0] > 100 else PAYLOAD[:20000]
    r, _, _ = reader(chunked(payload, sizes), None, pieces=pieces)
    assert drain(r) == payload
    assert r.next_span(10) is None


def test_chunk_payloads_in_the_buffer_are_handed_out_together():
    # 32 KiB chunks arriving in one buffer come out as a few large views, not one per chunk.
    payload = PAYLOAD[: 2 * BUFFER_SIZE]
    r, _, _ = reader(chunked(payload, [32768]), None, pieces=[10 * BUFFER_SIZE])
    spans = []
    while (span := r.next_span(BUFFER_SIZE)) is not None:
        spans.append(bytes(span))
    assert b"".join(spans) == payload
    assert len(spans) <= 4


def test_a_limit_smaller_than_the_chunks_is_respected():
    r, _, _ = reader(chunked(PAYLOAD[:50000], [30000]), None)
    assert drain(r, limit=1000) == PAYLOAD[:50000]


def test_bytes_gunicorn_read_past_the_headers_start_the_body():
    wire = chunked(b"hello world", [4])
    r, _, _ = reader(wire[5:], None, held=wire[:5])
    assert drain(r) == b"hello world"


def test_extensions_and_trailers_are_accepted_and_skipped():
    wire = chunked(b"abcdef" * 100, [50], trailer=b"X-Checksum: 1\r\nOther: two\r\n", ext=b';name="v"')
    r, _, _ = reader(wire, None, pieces=[3])
    assert drain(r) == b"abcdef" * 100


def test_a_pipelined_next_request_goes_back_to_gunicorn():
    nxt = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
    for held in (b"", chunked(b"data", [2]) + nxt):  # arriving later, or already read ahead
        wire = b"" if held else chunked(b"data", [2]) + nxt
        r, unreader, _ = reader(wire, None, held=held)
        assert drain(r) == b"data"
        assert unreader.take_buffered() == nxt


def test_length_body_never_reads_past_its_end():
    nxt = b"GET /v2/ HTTP/1.1\r\n\r\n"
    r, unreader, sock = reader(b"0123456789" + nxt, 10, pieces=[4])
    assert drain(r) == b"0123456789"
    assert sock._pos == 10
    r, unreader, _ = reader(b"", 4, held=b"0123" + nxt)
    assert drain(r) == b"0123"
    assert unreader.take_buffered() == nxt


def test_read_returns_bytes_of_the_size_asked():
    r, _, _ = reader(chunked(PAYLOAD[:10000], [333]), None, pieces=[100])
    got = [r.read(4096) for _ in range(4)]
    assert all(isinstance(g, bytes) for g in got)
    assert b"".join(got) == PAYLOAD[:10000]
    assert got[-1] == b""


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"zz\r\nabc\r\n0\r\n\r\n", "invalid chunk size"),
        (b"\r\nabc", "invalid chunk size"),
        (b"3 x\r\nabc\r\n0\r\n\r\n", "invalid chunk size"),
        (b"3;\r\nabc\r\n0\r\n\r\n", "invalid chunk extension"),
        (b'3;a="x\rq"\r\nabc\r\n0\r\n\r\n', "invalid chunk extension"),
        (b"3\r\nabcXY0\r\n\r\n", "not followed by CRLF"),
        (b"3\r\nab", "ended early"),
        (b"3\r\nabc\r\n", "ended early"),
        (b"3\r\nabc\r\n0\r\nTrailer: x\r\n", "ended early"),
        (b"1" * (LINE_LIMIT + 10), "size line longer"),
        (b"0\r\n" + b"T: " + b"x" * TRAILER_LIMIT, "trailer section longer"),
    ],
)
def test_malformed_or_truncated_chunked_bodies_are_refused(wire, message):
    r, _, _ = reader(wire, None, pieces=[2, 4096])
    with pytest.raises(BodyError, match=message):
        drain(r)


def test_a_length_body_that_ends_early_is_refused():
    r, _, _ = reader(b"01234", 10)
    with pytest.raises(BodyError, match="ended early"):
        drain(r)


def test_a_connection_error_becomes_a_body_error():
    unreader = IterUnreader([])
    sock = ScriptedSocket(b"5\r\nab", error=ConnectionResetError("reset by peer"))
    r = SocketBodyReader(sock, unreader, None, LINE_LIMIT, TRAILER_LIMIT, LIMITS)
    with pytest.raises(BodyError, match="connection failed"):
        drain(r)


def test_socket_body_views_mark_the_body_failed_so_gunicorn_closes_the_connection():
    r, _, _ = reader(b"zz\r\n", None)
    request = FakeRequest()
    body = SocketBody(r, request)
    with pytest.raises(BodyError):
        list(body.views(1024))
    assert body.failed is True
    assert request.must_close is True


def test_socket_body_views_start_with_what_read_kept_back():
    r, _, _ = reader(chunked(b"abcdefghij" * 10, [10]), None)
    body = SocketBody(r, FakeRequest())
    assert body.readline() == b"abcdefghij" * 10  # Body keeps read-ahead in its own buffer
    assert b"".join(bytes(v) for v in body.views(7)) == b""
    r, _, _ = reader(b"abc\ndefgh", 9)
    body = SocketBody(r, FakeRequest())
    assert body.readline() == b"abc\n"
    assert b"".join(bytes(v) for v in body.views(1024)) == b"defgh"


def test_a_failed_read_also_closes_the_connection():
    r, _, _ = reader(b"3\r\nab", None)
    request = FakeRequest()
    body = SocketBody(r, request)
    with pytest.raises(BodyError):
        body.read(100)
    assert body.failed is True
    assert request.must_close is True


@pytest.mark.parametrize("limit", [1000, 8192, 300_000, BUFFER_SIZE])
@pytest.mark.parametrize("pieces", [[1000, 77_777], [BUFFER_SIZE // 3], [10 * BUFFER_SIZE]])
def test_length_body_larger_than_the_buffer_comes_out_whole_in_any_read_sizes(limit, pieces):
    length = 2 * BUFFER_SIZE + 4321
    r, _, _ = reader(PAYLOAD[:length] + b"NEXT", length, pieces=pieces)
    assert drain(r, limit=limit) == PAYLOAD[:length]


def test_slow_client_pieces_are_gathered_into_batches():
    # A client slower than Berth: every recv() returns 4 KiB. The app still gets large views.
    for wire, length in (
        (PAYLOAD[: 2 * BUFFER_SIZE], 2 * BUFFER_SIZE),
        (chunked(PAYLOAD[: 2 * BUFFER_SIZE], [16384]), None),
    ):
        r, _, _ = reader(wire, length, pieces=[4096])
        spans = []
        while (span := r.next_span(BUFFER_SIZE)) is not None:
            spans.append(len(span))
        assert sum(spans) == 2 * BUFFER_SIZE
        assert min(spans[:-1]) >= BATCH


# --------------------------------------------------------------------------- memory and deadlines


def test_nothing_is_allocated_or_read_until_the_body_is_asked_for():
    """A request refused before its body is read costs no buffer and no read."""
    r, unreader, sock = reader(chunked(PAYLOAD[:5000], [100]), None, held=b"5\r\nabcde\r\n")
    assert len(r._buf) == 0
    assert sock.calls == 0
    assert unreader.take_buffered() == b"5\r\nabcde\r\n"  # still gunicorn's, untouched


@pytest.mark.parametrize("length", [None, 3 * BUFFER_SIZE])
def test_the_buffer_starts_small_and_grows_only_as_the_body_proves_large(length):
    from serving.body import INITIAL_BUFFER_SIZE

    wire = chunked(PAYLOAD[:1000], [100]) if length is None else PAYLOAD[:1000]
    small, _, _ = reader(wire, None if length is None else 1000)
    assert drain(small) == PAYLOAD[:1000]
    assert len(small._buf) <= INITIAL_BUFFER_SIZE
    payload = PAYLOAD[: 3 * BUFFER_SIZE]
    wire = chunked(payload, [65536]) if length is None else payload
    big, _, _ = reader(wire, length, pieces=[10 * BUFFER_SIZE])
    sizes = set()
    out = bytearray()
    while (span := big.next_span(BUFFER_SIZE)) is not None:
        out += span
        sizes.add(len(big._buf))
    assert out == payload
    assert max(sizes) == BUFFER_SIZE


def test_a_large_trailer_section_grows_the_buffer_up_to_its_limit():
    trailer = b"X-Big: " + b"t" * 200_000 + b"\r\n"
    r, _, _ = reader(chunked(b"abc", [3], trailer=trailer), None, pieces=[4096])
    assert drain(r) == b"abc"


def test_release_frees_the_buffer_and_refuses_further_reads():
    r, _, _ = reader(PAYLOAD[: 2 * BUFFER_SIZE], 2 * BUFFER_SIZE)
    r.next_span(BATCH)
    r.release()
    assert len(r._buf) == 0
    with pytest.raises(BodyError, match="the request is over"):
        drain(r)


class SilentSocket(ScriptedSocket):
    """Hands out `data` in pieces, then waits like a gevent socket: until its timeout."""

    def __init__(self, data: bytes, pieces: list[int] | None = None) -> None:
        super().__init__(data, pieces)
        self.timeouts: list[float | None] = []

    def settimeout(self, timeout: float | None) -> None:
        self.timeouts.append(timeout)

    def recv_into(self, view, nbytes: int = 0) -> int:
        if self._pos == len(self._data):
            raise TimeoutError("timed out")
        return super().recv_into(view, nbytes)


def test_every_receive_waits_no_longer_than_the_rest_of_the_period_and_silence_is_refused():
    limits = ServerLimits(body_timeout=7, min_rate=1024)
    sock = SilentSocket(b"12345", pieces=[2])
    r = SocketBodyReader(sock, IterUnreader([]), 100, LINE_LIMIT, TRAILER_LIMIT, limits)
    with pytest.raises(BodyError, match=r"receiving the request body: fewer than 7168 bytes in 7 s"):
        drain(r)
    waits = [t for t in sock.timeouts if t is not None]
    assert waits and all(0 < t <= 7 for t in waits)
    assert sock.timeouts[-1] is not None  # failed: the connection closes, no reset needed


def test_the_deadline_is_lifted_when_the_body_ends():
    sock = SilentSocket(b"0123456789", pieces=[3])
    r = SocketBodyReader(sock, IterUnreader([]), 10, LINE_LIMIT, TRAILER_LIMIT, LIMITS)
    assert drain(r) == b"0123456789"
    assert sock.timeouts[-1] is None  # what follows (the next request's head) has its own


def test_time_the_server_spends_elsewhere_is_not_held_against_the_client(monkeypatch):
    """Between two reads the app may spend minutes writing to slow storage; the client's bytes
    are waiting in the socket meanwhile. Only waits for the client count towards the period."""
    import serving.body

    now = [0.0]
    monkeypatch.setattr(serving.body, "monotonic", lambda: now[0])
    limits = ServerLimits(body_timeout=2, min_rate=1024 * 1024)  # 2 MiB per 2 s of waiting
    wire = PAYLOAD[: 4 * BUFFER_SIZE]
    r = SocketBodyReader(
        ScriptedSocket(wire, pieces=[65536]), IterUnreader([]), len(wire), LINE_LIMIT, TRAILER_LIMIT, limits
    )
    out = bytearray()
    while (span := r.next_span(BUFFER_SIZE)) is not None:
        out += span
        now[0] += 100  # a slow storage write
    assert out == wire
