"""What the server and the application tell each other about a response that cannot be served
as planned. Standard library only (imported by the gunicorn master and by the app)."""

from __future__ import annotations


class IncompleteResponse(Exception):
    """A response body that cannot be completed after its headers went out (the storage behind
    it failed, or returned fewer bytes than the Content-Length promised). The server closes the
    connection at once, so the client sees a short body rather than waiting for bytes that will
    never come, and logs the message as one warning line."""


class ClientTooSlow(TimeoutError):
    """A client stayed silent, or moved fewer bytes than the minimum rate, for a whole period
    (serving/pace.py). The connection is closed."""
