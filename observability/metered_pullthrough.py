"""Pull-through metrics: PullThrough (upstream/) around which create_app puts this, so the
upstream code stays free of them. The resources call pull-through only for what is missing
here, so every blob call is a miss with a result: fetched (an upstream had it), not_found (none
had it) or error (one failed, or the relay broke off); blob hits are counted by the resources.
Every manifest request goes through `resolve`: a hit when it was stored here.
Bytes are counted as they arrive from the upstream."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from errors import BlobUnknown, ManifestUnknown
from observability import metrics
from storage.blobs import BlobInfo
from storage.digests import Digest
from storage.manifests import ManifestInfo
from upstream.pullthrough import PulledBlob, PullThrough


class MeteredPullThrough:
    def __init__(self, inner: PullThrough) -> None:
        self._inner = inner

    def resolve(self, name: str, reference: str) -> tuple[ManifestInfo, bytes | None]:
        with _failures("manifest", ManifestUnknown):
            info, body = self._inner.resolve(name, reference)
        if body is None:  # stored here (a tag due for its check was checked first)
            metrics.pullthrough("manifest", "hit")
        else:
            metrics.pullthrough("manifest", "fetched", len(body))
        return info, body

    def blob_info(self, name: str, digest: Digest) -> BlobInfo:
        with _failures("blob", BlobUnknown):
            info = self._inner.blob_info(name, digest)
        metrics.pullthrough("blob", "fetched")
        return info

    def blob(self, name: str, digest: Digest) -> PulledBlob:
        with _failures("blob", BlobUnknown):
            pulled = self._inner.blob(name, digest)
        metrics.pullthrough("blob", "fetched")
        return PulledBlob(pulled.size, _CountedRelay(pulled.stream))


@contextmanager
def _failures(kind: str, unknown: type[Exception]) -> Iterator[None]:
    """Counts a lookup that failed: not_found when no upstream has it, error otherwise."""
    try:
        yield
    except unknown:
        metrics.pullthrough(kind, "not_found")
        raise
    except Exception:
        metrics.pullthrough(kind, "error")
        raise


class _CountedRelay:
    """A blob relay (a WSGI body) whose bytes are counted as they come from the upstream."""

    def __init__(self, relay) -> None:
        self._relay = relay

    def __iter__(self) -> Iterator[bytes]:
        counter = metrics.PULLTHROUGH_BYTES.labels("blob")
        try:
            for chunk in self._relay:
                counter.inc(len(chunk))
                yield chunk
        except Exception:
            metrics.pullthrough("blob", "error")
            raise

    def close(self) -> None:
        self._relay.close()
