"""Fixtures for the conformance suite.

Target selection:
* ``CONFORMANCE_URL`` set (e.g. ``http://127.0.0.1:5055``): an :class:`HttpClient` against that
  server, with Basic auth from ``CONFORMANCE_USER``/``CONFORMANCE_PASS`` if given.
* otherwise the project's ``registry_target`` fixture (``tests/conftest.py``) is used: its
  ``.client()`` gives a ready client and ``.repo(prefix)`` a fresh repository name.  It must have
  module or session scope, because ``oci_target`` is module scoped.

Other switches (all optional):
* ``CONFORMANCE_STRICT=1``: things the Go suite only reports as "unsupported" (e.g. 202 instead
  of 201 on a monolithic POST, 400/405 on DELETE by tag, no range support) fail instead of skip
  against a foreign registry.  Against Berth (``CONFORMANCE_URL`` unset) they always fail.
* ``CONFORMANCE_SPARSE=1``: generate the "sparse" data set (disabled by default in the Go suite too).
* ``CONFORMANCE_AUTOMATIC_CROSSMOUNT=1|0``: generate the classic "mount without from" check for
  that setting (default: 1 for Berth, unset = neither check for a foreign registry).
* ``OCI_TAG_NAME`` + ``OCI_MANIFEST_DIGEST`` + ``OCI_BLOB_DIGEST`` / ``OCI_TAG_LIST``: the Go
  suite's read-only-run variables; only then are the classic "from environment" setup steps
  generated (this port always pushes its own data, so they only report that).

Steps that cannot apply to the configured run are not generated at all (collection time), so a
run against Berth has no skips.
"""

from __future__ import annotations

import pytest


class ConformanceTarget:
    """What the tests use: one client plus a factory of fresh repository names."""

    def __init__(self, target):
        self._target = target
        self.client = target.client()

    def repo(self, prefix: str = "conformance") -> str:
        return self._target.repo(prefix)


@pytest.fixture(scope="module")
def oci_target(registry_target):
    """Every test runs against each target of the project's `registry_target` fixture (the app
    through TestClient and under gunicorn, or CONFORMANCE_URL)."""
    ct = ConformanceTarget(registry_target)
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
