"""gunicorn's gevent worker, with what a registry needs at the socket level.

Docker, podman and skopeo probe an insecure registry with a TLS ClientHello before falling back
to plain HTTP. gunicorn would wait for a request line that never comes (until the keep-alive
timeout), and the client would sit in its TLS handshake timeout on every session. Answering a
TLS record with a plain HTTP 400 and closing, as Go's net/http does, lets the client fall back
at once.

This module is loaded by the gunicorn master (as `worker_class`), before gevent patches
anything: it imports only gunicorn and the standard library.
"""

from __future__ import annotations

import socket

from gunicorn.workers.ggevent import GeventWorker

TLS_HANDSHAKE_RECORD = 0x16
_TLS_REFUSAL = (
    b"HTTP/1.0 400 Bad Request\r\n"
    b"Content-Type: text/plain\r\n"
    b"Connection: close\r\n\r\n"
    b"This port speaks plain HTTP; terminate TLS in a reverse proxy in front of it.\n"
)


class RegistryGeventWorker(GeventWorker):
    def handle(self, listener, client, addr):
        if self.cfg.is_ssl:
            # gunicorn terminates TLS itself here: a ClientHello is what it expects.
            super().handle(listener, client, addr)
            return
        client.setblocking(1)
        try:
            first = client.recv(1, socket.MSG_PEEK)
        except OSError:
            first = b""
        if first and first[0] == TLS_HANDSHAKE_RECORD:
            try:
                client.sendall(_TLS_REFUSAL)
            except OSError:
                pass
            finally:
                client.close()
            return
        super().handle(listener, client, addr)
