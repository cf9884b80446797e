"""serving/connection.py's sendfile: a blob (or a range of it) written in blocks, also when the
socket buffer is full and the receiver is slow."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from serving.connection import SEND_BLOCK, ClientConnection
from serving.errors import IncompleteResponse
from serving.limits import ServerLimits


def _receive_all(sock: socket.socket, out: bytearray) -> None:
    while chunk := sock.recv(65536):
        out += chunk


@pytest.mark.parametrize(
    ("offset", "count"),
    [(0, None), (0, 10), (12345, None), (SEND_BLOCK - 1, SEND_BLOCK + 2), (0, 0)],
)
def test_sends_exactly_the_range_asked_and_leaves_the_file_after_it(tmp_path, offset, count):
    data = os.urandom(3 * SEND_BLOCK + 999)
    path = tmp_path / "blob"
    path.write_bytes(data)
    sender, receiver = socket.socketpair()
    sender.setblocking(False)  # as gevent keeps it: full buffers raise BlockingIOError
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    got = bytearray()
    reader = threading.Thread(target=_receive_all, args=(receiver, got))
    reader.start()
    try:
        with open(path, "rb") as fh:
            sent = ClientConnection(sender, ServerLimits()).sendfile(fh, offset, count)
            position = fh.tell()
    finally:
        sender.close()
        reader.join(10)
        receiver.close()
    expected = data[offset:] if count is None else data[offset : offset + count]
    assert sent == len(expected)
    assert bytes(got) == expected
    assert position == offset + sent


def test_a_file_shorter_than_the_count_is_an_incomplete_response(tmp_path):
    """The Content-Length promised 500 bytes: the worker must close the connection rather than
    leave the client waiting for the rest."""
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 1000)
    sender, receiver = socket.socketpair()
    with open(path, "rb") as fh, pytest.raises(IncompleteResponse, match="after 100 of 500 bytes"):
        ClientConnection(sender, ServerLimits()).sendfile(fh, 900, 500)
    sender.close()
    assert receiver.recv(1000) == b"x" * 100
    receiver.close()
