"""gunicorn's gevent worker, with what a registry exposed to the internet needs at the socket level.

- Every wait on a client has a deadline (serving/limits.py, BERTH_* settings). A new
  connection must send a complete request head within BERTH_HEADER_TIMEOUT of being accepted;
  a keep-alive connection may wait idle for its next request for the keep-alive timeout, and
  that request's head must then be complete within BERTH_HEADER_TIMEOUT of its first byte.
  Request bodies and responses must keep moving (serving/pace.py). Silent, trickling and
  non-reading clients are closed, so idle sockets cannot use up `worker_connections`.
- A refused request's body is never read: nothing is allocated for it (serving/body.py) and,
  rather than draining a body of any size, the answer says `Connection: close` and the
  connection closes.
- Fairness: gevent never preempts. A client on a keep-alive connection whose next request is
  always already there never blocks, so its greenlet would serve it for ever while accepts and
  every other connection wait. After each request the connection takes its turn again behind
  the others, a newly accepted connection is served at once, and each wake-up of the
  listening socket accepts several connections (bench/fairness.py measures all this).
- A response that cannot be completed (IncompleteResponse, or an iterable shorter than its
  Content-Length) closes the connection at once: the client sees a short body at once instead
  of waiting for the keep-alive timeout.
- Expected events (a client going away mid-download, a slow client cut, a graceful stop that
  has to end requests) are one log line at info or warning, never a traceback.
- Docker, podman and skopeo probe an insecure registry with a TLS ClientHello before falling
  back to plain HTTP. Answering a TLS record with a plain HTTP 400 and closing, as Go's
  net/http does, lets the client fall back at once.
- Request bodies are read with `recv_into` into one buffer per request and reach the app as
  memoryviews (serving/body.py); downloads are written in 256 KiB blocks (serving/connection.py).
- On a graceful stop or reload, requests in flight (uploads included) may finish, within the
  graceful timeout; idle keep-alive connections are closed at once and clients reconnect.
- A request's receive buffer is freed when the request ends, not when the garbage collector
  gets to the request's reference cycles.
- Every request, those gunicorn's parser refuses included, gets a request id (returned as
  `X-Request-Id` and carried by every log line of the request), one structured access line and
  its HTTP metrics (observability/requests.py). gunicorn's own access log stays off unless
  asked for (`--access-logfile`).

The connection loop and handle_request are gunicorn's (AsyncWorker, HTTP/1.1 only: Berth does
not enable HTTP/2), rewritten here so that each of the points above has one clear place.

This module is loaded by the gunicorn master (as `worker_class`), before gevent patches
anything: it imports only gunicorn, gevent, serving/ and the standard library, as gunicorn's
own gevent worker does. The request observer (which imports prometheus_client) is imported
in the worker, once gevent has patched and the app is loaded.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import socket
import sys
import time
from contextlib import suppress
from datetime import timedelta
from functools import partial

import gevent
import gevent.event
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.sock import ssl_context
from gunicorn.workers.ggevent import GeventWorker

from serving import body
from serving.connection import ClientConnection
from serving.errors import ClientTooSlow, IncompleteResponse
from serving.limits import ServerLimits

TLS_HANDSHAKE_RECORD = 0x16
_TLS_REFUSAL = (
    b"HTTP/1.0 400 Bad Request\r\n"
    b"Content-Type: text/plain\r\n"
    b"Connection: close\r\n\r\n"
    b"This port speaks plain HTTP; terminate TLS in a reverse proxy in front of it.\n"
)
# A client whose connection failed: nothing to answer, nothing to trace.
_CLIENT_GONE = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED}
# Connections accepted per wake-up of the listening socket. gunicorn accepts one when several
# workers share the socket, so that each gets a share; but under load the event loop polls the
# socket only between turns of the busy connections (a few ms each), and 1,000 clients
# connecting at once would wait for a thousand turns to be accepted.
ACCEPT_BATCH = 16


class RegistryGeventWorker(GeventWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = ServerLimits.from_env(os.environ)  # validated by gunicorn.conf.py
        self._connections: dict[gevent.Greenlet, socket.socket] = {}
        self._idle: set[gevent.Greenlet] = set()  # connections waiting for a request
        self._exiting = gevent.event.Event()

    def init_process(self):
        # A stop signal that arrives while the worker boots (gevent's patching alone takes a
        # while) would reach the master's handler, inherited through fork, and be lost: the
        # worker would then serve on until the master kills it at the end of the graceful
        # timeout. Until gunicorn installs the worker's own handlers, remember it instead.
        signal.signal(signal.SIGTERM, self._stop_while_booting)
        super().init_process()

    def _stop_while_booting(self, sig, frame):
        self.alive = False  # run() then stops as soon as it starts

    def load_wsgi(self):
        super().load_wsgi()
        # Here, not at the top: prometheus_client must be imported after gevent patched the
        # standard library and with the instance's PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py).
        from observability.requests import RequestObserver
        from settings import Settings

        self.observer = RequestObserver.from_settings(Settings.from_env())  # validated at start
        self.observer.start()

    # ----------------------------------------------------------------- accepting and stopping

    def run(self):
        ssl_args = {"ssl_context": ssl_context(self.cfg)} if self.cfg.is_ssl else {}
        servers = []
        for listener in self.sockets:
            listener.setblocking(1)
            pool = _NewConnectionsFirst(self.worker_connections)
            server = StreamServer(listener, handle=partial(self.handle, listener), spawn=pool, **ssl_args)
            server.max_accept = ACCEPT_BATCH
            server.start()
            servers.append(server)
        while self.alive:
            self.notify()
            self._exiting.wait(1.0)  # set on a stop or reload signal: start stopping at once
        self._stop(servers)
        try:
            self.observer.flush()
        except OSError as exc:
            self.log.warning("could not write this worker's last metrics: %s", exc)

    def _stop(self, servers: list[StreamServer]) -> None:
        """Stop accepting, let requests in flight finish, and end those still running just
        before the master's graceful timeout would kill the process."""
        for server in servers:
            server.close()
        deadline = time.monotonic() + max(0.0, self.cfg.graceful_timeout - 1)
        while time.monotonic() < deadline:
            if all(server.pool.free_count() == server.pool.size for server in servers):
                return
            self.notify()
            gevent.sleep(0.1)
        running = sum(server.pool.size - server.pool.free_count() for server in servers)
        self.log.warning(
            "Graceful timeout (%ss): closing %d connection(s) still busy (pid %s)",
            self.cfg.graceful_timeout, running, self.pid,
        )  # fmt: skip
        for server in servers:
            server.stop(timeout=1)

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        self._exiting.set()
        gevent.spawn(self._close_idle_connections)

    def _close_idle_connections(self) -> None:
        # Repeated until the process ends: connections accepted just before the listener
        # closed, or going idle after their last request, are closed too.
        while True:
            for greenlet in list(self._idle):
                client = self._connections.get(greenlet)
                if client is not None:
                    with suppress(OSError):
                        client.shutdown(socket.SHUT_RDWR)
            gevent.sleep(0.2)

    # ----------------------------------------------------------------- one connection

    def handle(self, listener, client, addr):
        current = gevent.getcurrent()
        self._connections[current] = client
        conn = ClientConnection(client, self.limits)
        req = None
        try:
            conn.head_deadline = time.monotonic() + self.limits.header_timeout
            first = self._wait_for_request(conn, self.limits.header_timeout)
            if first is None:
                return  # closed, or silent for the whole header timeout
            if first == TLS_HANDSHAKE_RECORD and not self.cfg.is_ssl:
                # (With gunicorn terminating TLS itself, a ClientHello is what it expects.)
                _refuse_tls(client)
                return
            parser = http.get_parser(self.cfg, conn, addr)
            listener_name = listener.getsockname()
            proxy_protocol_info = {}  # PROXY protocol (off in Berth): the first request carries it
            while True:
                req = None  # what handle_error is told, should parsing fail
                req = next(parser)  # its reads wait no longer than conn.head_deadline
                if req.proxy_protocol_info:
                    proxy_protocol_info = req.proxy_protocol_info
                else:
                    req.proxy_protocol_info = proxy_protocol_info
                if not self.handle_request(listener_name, req, conn, addr):
                    return
                pipelined = _has_buffered(parser.unreader)
                if not pipelined and self._wait_for_request(conn, self.cfg.keepalive) is None:
                    return
                # Take turns: the next request waits until every other connection ready to run
                # had one. Those turns run from gevent's queue of callbacks, which the event
                # loop leaves every few ms to poll sockets and accept new connections; served
                # straight from the poll, all ready connections would go before the next poll.
                gevent.sleep(0)
                conn.head_deadline = time.monotonic() + self.limits.header_timeout
        except (StopIteration, http.errors.NoMoreData):
            self.log.debug("Client closed the connection")
        except ClientTooSlow as exc:
            self.log.info("Closing a connection from %s: %s", _ip(addr), exc)
        except OSError as exc:
            if exc.errno not in _CLIENT_GONE:
                self.log.exception("Socket error processing request.")
        except gevent.GreenletExit:
            pass  # the graceful timeout ended this connection, and said so
        except Exception as exc:
            self.handle_error(req, conn, addr, exc)
        finally:
            record = getattr(req, "berth_record", None)
            if record is not None and not record.ended:  # the connection failed mid-request
                self.observer.end(record, 0, body.payload_bytes(req), 0, "connection closed")
            self._connections.pop(current, None)
            util.close(client)

    def _wait_for_request(self, conn: ClientConnection, timeout: float) -> int | None:
        """The first byte of the next request, left unread; None if the connection closed or
        stayed silent for `timeout` seconds. Meanwhile the connection counts as idle, so a
        graceful stop closes it."""
        current = gevent.getcurrent()
        self._idle.add(current)
        try:
            return conn.first_byte(timeout)
        finally:
            self._idle.discard(current)

    def handle_request(self, listener_name, req, conn: ClientConnection, addr) -> bool:
        """Serve one request: gunicorn's AsyncWorker.handle_request with the changes marked
        "Berth". Returns whether the connection may serve another request."""
        environ, resp, respiter = {}, None, None
        sent_before = conn.sent
        # Berth: the request's id, for its log lines and its response; its access line at the end.
        record = req.berth_record = self.observer.begin(
            req.method, req.path, _ip(addr), _header(req, "X-REQUEST-ID")
        )
        file_bytes = 0  # body bytes sent from a file (gunicorn's count does not include them)
        body.install(req, conn.sock, self.limits)
        try:
            self.cfg.pre_request(self, req)
            resp, environ = wsgi.create(req, conn, addr, listener_name, self.cfg)
            record.environ = environ
            environ["wsgi.multithread"] = True
            self.nr += 1
            if self.nr >= self.max_requests and self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            if not self.alive or not self.cfg.keepalive:
                resp.force_close()

            def start_response(status, headers, exc_info=None):
                # Berth: a body the app did not read (a refused request: 401, 403, 404, 413...)
                # is not drained, whatever its size: the answer says `Connection: close`.
                if body.left_unread(req):
                    resp.force_close()
                headers = [*headers, ("X-Request-Id", record.request_id)]  # Berth
                return resp.start_response(status, headers, exc_info)

            respiter = self.wsgi(environ, start_response)
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.send_headers()  # Berth: so that what follows counts the body alone
                    before = conn.sent
                    try:
                        resp.write_file(respiter)
                    finally:
                        file_bytes = conn.sent - before
                else:
                    for item in respiter:
                        resp.write(item)
                    # Berth: a body shorter than its Content-Length ends the connection now.
                    if _short(req, resp):
                        raise IncompleteResponse(
                            f"the body ended after {resp.sent} of {resp.response_length} bytes"
                        )
                resp.close()
            finally:
                # Berth writes its own access line (the observer, below). gunicorn's is built
                # only when asked for (--access-logfile): gunicorn would otherwise build it for
                # nothing on every request, because a logconfig_dict is set.
                if self.cfg.accesslog:
                    self.log.access(
                        resp, req, environ, timedelta(seconds=time.perf_counter() - record.started)
                    )
                if hasattr(respiter, "close"):
                    respiter.close()
            self._log_body_failure(req)
            return not resp.should_close()
        # Berth: expected failures are one line each, and the connection closes.
        except IncompleteResponse as exc:
            if resp is None or not resp.headers_sent:
                raise  # nothing sent yet: answered with a 500
            self.log.warning("%s %s: %s; connection closed", req.method, req.path, exc)
            return False
        except ClientTooSlow as exc:
            self.log.info("%s %s from %s: %s; connection closed", req.method, req.path, _ip(addr), exc)
            return False
        except OSError as exc:
            if exc.errno not in _CLIENT_GONE:
                raise
            self.log.info(
                "%s %s: the client went away after %d bytes of the response (%s)",
                req.method, req.path, conn.sent - sent_before, exc.strerror or exc,
            )  # fmt: skip
            return False
        except Exception:
            if resp is not None and resp.headers_sent:
                # Writing an error response now would corrupt the one under way: close.
                self.log.exception("Error handling request %s %s", req.method, req.uri)
                return False
            raise
        finally:
            # An exception on its way out is answered by handle_error, which ends the record.
            if sys.exc_info()[0] is None:
                status = resp.status_code if resp is not None and resp.status_code else 0
                sent = (resp.sent if resp is not None else 0) + file_bytes
                self.observer.end(record, status, body.payload_bytes(req), sent)
            body.release(req)  # Berth: now, not at the garbage collector's next full pass
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")

    def handle_error(self, req, client, addr, exc):
        """gunicorn's error answer (400 for a request its parser refused, 500 for an app that
        failed before its response began), with the request's id and its access line."""
        record = getattr(req, "berth_record", None)
        if record is None:  # refused before any app saw it
            method, path = getattr(req, "method", None) or "-", getattr(req, "path", None) or "-"
            header_id = _header(req, "X-REQUEST-ID") if req is not None else None
            record = self.observer.begin_refused(method, path, _ip(addr), header_id)
        answer = _ErrorAnswer(client, record.request_id)
        try:
            super().handle_error(req, answer, addr, exc)
        finally:
            received = body.payload_bytes(req) if req is not None else 0
            note = f"{type(exc).__name__}: {exc}"[:200]
            self.observer.end(record, answer.status, received, answer.body_bytes, note)

    def _log_body_failure(self, req) -> None:
        error = getattr(req.body, "error", None)
        if error is not None:  # answered (400) and closing; say why once, for the operator
            self.log.info("%s %s: request body: %s; connection closed", req.method, req.path, error)


class _NewConnectionsFirst(Pool):
    """The pool of connection greenlets. A greenlet spawned by the accept loop runs at once,
    until it first waits, instead of joining the end of the queue of greenlets ready to run:
    under load that queue holds every busy keep-alive connection, and a new client would wait
    for all of them to be served once (0.5 s with 1,000 connections) before its first request
    is even read. The accept callback runs in the event loop's own greenlet, which is where
    gevent resumes any greenlet whose socket became ready, so switching from there is safe."""

    def start(self, greenlet, *args, **kwargs):
        self.add(greenlet, *args, **kwargs)
        if gevent.getcurrent() is gevent.get_hub():
            greenlet.switch()
        else:
            greenlet.start()


class _ErrorAnswer:
    """The client's socket, as gunicorn's error answer (util.write_error, one sendall) sees it:
    the answer gets the request's `X-Request-Id`, and its status and size are kept for the log."""

    def __init__(self, sock, request_id: str) -> None:
        self._sock = sock
        self._request_id = request_id.encode("ascii")
        self.status = 0
        self.body_bytes = 0

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def sendall(self, data: bytes) -> None:
        status_line, crlf, rest = bytes(data).partition(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) >= 2 and parts[1].isdigit() and crlf:
            self.status = int(parts[1])
            self.body_bytes = len(rest.partition(b"\r\n\r\n")[2])
            data = status_line + b"\r\nX-Request-Id: " + self._request_id + b"\r\n" + rest
        self._sock.sendall(data)


def _header(req, name: str) -> str | None:
    """A request header's value (`name` in upper case, as gunicorn keeps names)."""
    for key, value in getattr(req, "headers", None) or ():
        if key == name:
            return value
    return None


def _short(req, resp) -> bool:
    """The response has a body, and it ended before its Content-Length."""
    status = resp.status_code or 0
    has_body = req.method != "HEAD" and status not in (204, 304) and status >= 200
    return has_body and resp.response_length is not None and resp.sent < resp.response_length


def _has_buffered(unreader) -> bool:
    """gunicorn's unreader holds bytes read past the last request: a pipelined next request."""
    return unreader.buf.seek(0, io.SEEK_END) > 0


def _ip(addr) -> str:
    return addr[0] if isinstance(addr, tuple) and addr else str(addr)


def _refuse_tls(client: socket.socket) -> None:
    """Answer, then close gracefully: closing with the ClientHello still unread would make the
    kernel send a reset, and the client could lose the answer. The wait for the client to
    close is bounded in time and bytes, like every other wait on a client."""
    deadline = time.monotonic() + 2
    try:
        client.settimeout(2)
        client.sendall(_TLS_REFUSAL)  # fits in any socket buffer
        client.shutdown(socket.SHUT_WR)
        drained = 0
        while drained < 1024 * 1024 and (left := deadline - time.monotonic()) > 0:
            client.settimeout(left)
            chunk = client.recv(65536)
            if not chunk:
                break  # the client closed
            drained += len(chunk)
    except OSError:
        pass
    finally:
        client.close()
