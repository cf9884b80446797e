"""The storage key layout, drawn and mapped in one place.

    blobs/<alg>/<hex[:2]>/<hex>/data            content-addressed bytes, stored once for all
                                                repositories (layers, configs and manifests)
    blobs/<alg>/<hex[:2]>/<hex>/doomed          while garbage collection deletes the data
    repositories/<name>/
        _layers/<alg>/<hex>                     link: the blob is part of this repository
                                                ("<digest> <time linked>")
        _manifests/<alg>/<hex>                  link: a manifest revision; JSON {mediaType, size,
                                                linked, pending}: pending while its PUT checks
                                                that no collection removes what it needs
        _tags/<tag>                             the digest the tag points at
        _referrers/<alg>/<hex>/<alg>.<hex>      a referrer of subject <alg>:<hex>; its descriptor
        _gc                                     while garbage collection deletes links and
                                                manifests here: which ones (JSON)
        _pushed                                 marker: a client pushed a manifest here, so
                                                pull-through from upstreams without a `prefix`
                                                never writes into this repository; JSON
                                                {"pushed_at": <unix time of the last push>}
        _upstream/tags/<tag>/checked            a tag pulled through from an upstream: JSON
                                                {"checked": <unix time the last upstream check
                                                ended>, "digest": <what the tag named after it>,
                                                "not_before": <unix time; 0 or when an
                                                upstream's 429 Retry-After ends>}. Not a
                                                reference: _tags/<tag> is what keeps content.
        _upstream/tags/<tag>/lock               held while one request checks that tag upstream
                                                (an empty file on local disk; on S3 a lease
                                                object that exists only while held)
    uploads/<id>/state.json                     an upload's progress (JSON, never pickled)
    uploads/<id>/data                           bytes received so far (local disk)
    uploads/<id>/lock                           held while a request writes the upload
    gc/state                                    whether a collection runs, and a counter of
                                                runs (storage/tombstones.py)
    gc/verdicts/<run>                           the blob data a running collection deletes
    gc/lock                                     held while a garbage collection runs
    gc/clock                                    written to read the store's clock
    gc/last-run                                 when the last scheduled collection ran (JSON)

Links and manifest links carry the time they were (re)written, so every write gives a new
version: the garbage collector tells a link renewed since its first look (storage/tombstones.py).

Repository path components start with [a-z0-9], so they never collide with the `_` names.
A blob becomes visible only when its data lands at its final key, after its digest was verified.
"""

from __future__ import annotations

from storage.digests import Digest

REPOSITORIES = "repositories"
UPLOADS = "uploads"


def blob_data(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}/data"


def blob_tombstone(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}/doomed"


def doom_list(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_gc"


GC_STATE = "gc/state"
GC_LOCK = "gc/lock"
GC_CLOCK = "gc/clock"
GC_LAST_RUN = "gc/last-run"


def gc_verdict(run: str) -> str:
    return f"gc/verdicts/{run}"


def repository(name: str) -> str:
    return f"{REPOSITORIES}/{name}"


def layer_link(name: str, digest: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_layers/{digest.algorithm}/{digest.hex}"


def manifest_link(name: str, digest: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/{digest.algorithm}/{digest.hex}"


def manifests_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_manifests"


def tags_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_tags"


def tag(name: str, tag_name: str) -> str:
    return f"{REPOSITORIES}/{name}/_tags/{tag_name}"


def referrers_dir(name: str, subject: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_referrers/{subject.algorithm}/{subject.hex}"


def referrer(name: str, subject: Digest, digest: Digest) -> str:
    return f"{referrers_dir(name, subject)}/{digest.algorithm}.{digest.hex}"


def pushed_marker(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_pushed"


def upstream_tag_check(name: str, tag_name: str) -> str:
    return f"{REPOSITORIES}/{name}/_upstream/tags/{tag_name}/checked"


def upstream_tag_lock(name: str, tag_name: str) -> str:
    return f"{REPOSITORIES}/{name}/_upstream/tags/{tag_name}/lock"


def upload_state(upload_id: str) -> str:
    return f"{UPLOADS}/{upload_id}/state.json"


def upload_data(upload_id: str) -> str:
    return f"{UPLOADS}/{upload_id}/data"


def upload_lock(upload_id: str) -> str:
    return f"{UPLOADS}/{upload_id}/lock"


def upload_dir(upload_id: str) -> str:
    return f"{UPLOADS}/{upload_id}"
