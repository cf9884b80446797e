"""Blob uploads: `POST /v2/<name>/blobs/uploads/` opens a session (or mounts, or takes a whole
blob), `/v2/<name>/blobs/uploads/<id>` takes chunks (PATCH), finishes (PUT), reports (GET) and
cancels (DELETE)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import falcon

from auth.identity import PULL
from errors import DigestInvalid, RangeInvalid
from observability import metrics
from resources.http import body_chunks, content_range
from storage.digests import ALGORITHMS, Digest, validate_name
from storage.registry import Registry
from storage.uploads import UploadState, upload_range


def _upload_location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


@contextmanager
def _resume_hint(name: str, upload_id: str) -> Iterator[None]:
    """A 416 carries the upload's Location: the client recovers by asking where to resume."""
    try:
        yield
    except RangeInvalid as exc:
        exc.headers.setdefault("Location", _upload_location(name, upload_id))
        raise


def _session_headers(resp: falcon.Response, name: str, state: UploadState) -> None:
    resp.set_header("Location", _upload_location(name, state.upload_id))
    resp.set_header("Range", upload_range(state.size))
    resp.set_header("Docker-Upload-UUID", state.upload_id)
    resp.content_length = 0


def _created(resp: falcon.Response, name: str, digest: Digest) -> None:
    resp.status = falcon.HTTP_201
    resp.set_header("Location", f"/v2/{name}/blobs/{digest}")
    resp.set_header("Docker-Content-Digest", str(digest))
    resp.content_length = 0


def _owner(req: falcon.Request) -> str:
    # The principal (auth/identity.py): unique across users, token subjects per issuer and
    # subjectless tokens, so no credential can pass for another's owner by reusing a name.
    return req.context.identity.principal


class UploadStart:
    scope = "repository"

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        validate_name(name)
        mount, source = req.get_param("mount"), req.get_param("from")
        if mount and source:
            digest = Digest.parse(mount)
            if self._registry.blobs.mount(name, validate_name(source), digest):
                metrics.upload_event("mounted")
                _created(resp, name, digest)
                return
            # Not mountable: the spec says to fall back to a regular upload session.
        elif mount and req.context.identity.may(None, PULL):
            # No `from`: the spec lets a registry mount any blob it has, but only for someone who
            # may read every repository, or it would leak blobs across access boundaries.
            digest = Digest.parse(mount)
            if self._registry.blobs.mount_any(name, digest):
                metrics.upload_event("mounted")
                _created(resp, name, digest)
                return
        digest_param = req.get_param("digest")
        if digest_param is not None:
            digest = Digest.parse(digest_param)
            info = self._registry.uploads.upload_whole(
                name, _owner(req), digest, body_chunks(req), req.content_length
            )
            metrics.upload_event("completed", info.size)
            _created(resp, name, digest)
            return
        algorithm = req.get_param("digest-algorithm") or "sha256"
        if algorithm not in ALGORITHMS:
            raise DigestInvalid("unsupported digest algorithm", detail={"digest-algorithm": algorithm})
        state = self._registry.uploads.start(name, _owner(req), algorithm)
        metrics.upload_event("started")
        resp.status = falcon.HTTP_202
        _session_headers(resp, name, state)


class Upload:
    scope = "repository"

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, upload_id: str) -> None:
        state = self._registry.uploads.status(validate_name(name), upload_id, _owner(req))
        resp.status = falcon.HTTP_204
        _session_headers(resp, name, state)

    def on_patch(self, req: falcon.Request, resp: falcon.Response, name: str, upload_id: str) -> None:
        validate_name(name)
        with _resume_hint(name, upload_id):
            state = self._registry.uploads.append(
                name, upload_id, _owner(req), body_chunks(req), content_range(req), req.content_length
            )
        resp.status = falcon.HTTP_202
        _session_headers(resp, name, state)

    def on_put(self, req: falcon.Request, resp: falcon.Response, name: str, upload_id: str) -> None:
        validate_name(name)
        raw_digest = req.get_param("digest")
        if not raw_digest:
            raise DigestInvalid("the closing PUT needs ?digest=")
        digest = Digest.parse(raw_digest)
        with _resume_hint(name, upload_id):
            info = self._registry.uploads.finish(
                name, upload_id, _owner(req), digest, body_chunks(req), content_range(req), req.content_length
            )
        metrics.upload_event("completed", info.size)
        _created(resp, name, info.digest)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str, upload_id: str) -> None:
        self._registry.uploads.cancel(validate_name(name), upload_id, _owner(req))
        metrics.upload_event("cancelled")
        resp.status = falcon.HTTP_204
        resp.content_length = 0
