"""Fixtures for the conformance suite.

Target selection:
* ``CONFORMANCE_URL`` set (e.g. ``http://127.0.0.1:5055``): an :class:`HttpClient` against that
  server, with Basic auth from ``CONFORMANCE_USER``/``CONFORMANCE_PASS`` if given.
* otherwise the project's ``registry_target`` fixture (``tests/conftest.py``) is used: its
  ``.client()`` gives a ready client and ``.repo(prefix)`` a fresh repository name.  It must have
  module or session scope, because ``oci_target`` is module scoped.

Other switches (all optional):
* ``CONFORMANCE_STRICT=1``: things the Go suite only reports as "unsupported" (e.g. 202 instead
  of 201 on a monolithic POST, 400/405 on DELETE by tag, no range support) fail instead of skip.
* ``CONFORMANCE_SPARSE=1``: run the "sparse" data set (disabled by default in the Go suite too).
* ``CONFORMANCE_AUTOMATIC_CROSSMOUNT=1|0``: run the classic "mount without from" checks.
"""

from __future__ import annotations

import os
import uuid

import pytest

from .client import HttpClient


class _UrlTarget:
    def __init__(self, url: str, auth):
        self.url = url
        self.auth = auth

    def client(self):
        return HttpClient(self.url, auth=self.auth)

    def repo(self, prefix: str = "conformance") -> str:
        return f"{prefix}/{uuid.uuid4().hex[:16]}"


class ConformanceTarget:
    """What the tests use: one client plus a factory of fresh repository names."""

    def __init__(self, target):
        self._target = target
        self.client = target.client()

    def repo(self, prefix: str = "conformance") -> str:
        return self._target.repo(prefix)


@pytest.fixture(scope="module")
def oci_target(request):
    url = os.environ.get("CONFORMANCE_URL")
    if url:
        user = os.environ.get("CONFORMANCE_USER")
        auth = (user, os.environ.get("CONFORMANCE_PASS", "")) if user else None
        target = _UrlTarget(url, auth)
    else:
        target = request.getfixturevalue("registry_target")
    ct = ConformanceTarget(target)
    yield ct
    close = getattr(ct.client, "close", None)
    if close:
        close()


@pytest.fixture(scope="module")
def oci(oci_target):
    """The client (HttpClient or WsgiClient)."""
    return oci_target.client


@pytest.fixture
def repo(oci_target):
    """A fresh, unique repository name for one test."""
    return oci_target.repo("conformance")
