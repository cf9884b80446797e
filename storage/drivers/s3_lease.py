"""Exclusive locks on S3/R2 as leases: a small object created with `If-None-Match: *`, holding
the holder's random token and its expiry.

- A lease lasts LEASE_TTL seconds from its last write. It holds its expiry on the writer's
  clock (the format older Berths read), and is taken over only once it is stale by both that
  and the store's clock (the response's `Date` minus the object's `LastModified`): a reader
  whose clock runs ahead cannot take a live lease. The holder renews it every
  LEASE_RENEW_EVERY seconds beside the request, so a crashed holder blocks the upload for
  LEASE_TTL seconds (plus any clock skew).
- A conditional PUT whose response was lost is retried by boto3 and then refused (412) by the
  lease it created itself: on any 412 the lease is read back, and our own token means we hold it.
- A request that finds the lease held waits, polling, up to the time it was given (the upload
  service gives more than LEASE_TTL, so a crashed holder's lease always lapses within the wait).
- Release deletes the lease, retried a few times; if that still fails it lapses within LEASE_TTL.
  A holder that saw its lease taken over does not delete the new holder's lease.
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from observability.request_context import run_in_request_context
from storage.driver import ObjectBusy, ObjectNotFound, StorageError

if TYPE_CHECKING:
    from storage.drivers.s3 import S3Driver

log = logging.getLogger("berth.s3")

LEASE_TTL = 10.0
LEASE_RENEW_EVERY = 2.5
RELEASE_ATTEMPTS = 3
_POLL_FIRST, _POLL_MAX = 0.1, 1.0


@dataclass(frozen=True)
class _Holder:
    token: str
    etag: str
    expired: bool


class Lease:
    def __init__(self, driver: S3Driver, key: str) -> None:
        self._driver = driver
        self._key = key
        self._object_key = driver.object_key(key)
        self._token = secrets.token_hex(16)
        self._etag: str | None = None
        self._confirmed = 0.0  # monotonic time of the last write known to have landed
        self._lost = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # -- acquiring ---------------------------------------------------------------------------

    def acquire(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        delay = _POLL_FIRST
        while not self._try_acquire():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ObjectBusy(self._key)
            time.sleep(min(delay * (0.5 + random.random()), remaining))  # noqa: S311 - jitter
            delay = min(delay * 2, _POLL_MAX)
        self._confirmed = time.monotonic()
        # In the request's context: its warnings carry the request's id.
        renew = run_in_request_context(self._renew)
        self._renewer = threading.Thread(target=renew, name="s3-lease", daemon=True)
        self._renewer.start()

    def _try_acquire(self) -> bool:
        if self._write(IfNoneMatch="*"):
            return True
        holder = self._holder()
        if holder is None:  # released between our two calls: the caller polls again
            return False
        if holder.token == self._token:
            return self._adopt(holder)
        if not holder.expired:
            return False
        # A crashed holder's lease: take it over, unless someone else just did.
        return self._write(IfMatch=holder.etag)

    def _write(self, **condition: str) -> bool:
        """PUT our token under `condition`; False if refused by someone else's lease."""
        from storage.drivers.s3 import crc32

        body = f"{self._token} {time.time() + LEASE_TTL:.3f}".encode()
        client = self._driver.client
        try:
            with self._errors():
                self._etag = client.put_object(
                    Bucket=self._driver.bucket, Key=self._object_key, Body=body, **condition, **crc32(body)
                )["ETag"]
            return True
        except ObjectBusy:
            # boto3 retries a PUT whose response was lost, and the store then refuses the
            # retry because of the lease the first attempt wrote: that lease is ours.
            holder = self._holder()
            return holder is not None and holder.token == self._token and self._adopt(holder)

    def _adopt(self, holder: _Holder) -> bool:
        self._etag = holder.etag
        return True

    def _holder(self) -> _Holder | None:
        try:
            response, data = self._driver.get_whole(self._key)
        except ObjectNotFound:
            return None
        fields = data.decode(errors="replace").split()
        token = fields[0] if fields else ""
        return _Holder(token, response["ETag"], _expired(response, fields))

    def _errors(self):
        from storage.drivers.s3 import s3_errors

        return s3_errors(self._key)

    # -- holding -----------------------------------------------------------------------------

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_RENEW_EVERY):
            try:
                renewed = self._write(IfMatch=self._etag or "*")
            except StorageError as exc:
                # The store is failing: keep trying until the lease would have lapsed.
                if time.monotonic() - self._confirmed > LEASE_TTL:
                    self._give_up(f"no renewal for {LEASE_TTL:g} s ({exc})")
                    return
                log.warning("could not renew the lease on %s: %s", self._key, exc)
                continue
            if not renewed:
                self._give_up("taken over by another request")
                return
            self._confirmed = time.monotonic()

    def _give_up(self, why: str) -> None:
        self._lost = True
        log.warning("lost the lease on %s: %s", self._key, why)

    # -- releasing ---------------------------------------------------------------------------

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=LEASE_TTL)
        if self._lost:
            return  # it may be someone else's now
        for attempt in range(RELEASE_ATTEMPTS):
            try:
                with self._errors():
                    self._driver.client.delete_object(Bucket=self._driver.bucket, Key=self._object_key)
                return
            except StorageError as exc:
                if attempt == RELEASE_ATTEMPTS - 1:
                    log.warning(
                        "could not release the lease on %s (it lapses in %g s): %s", self._key, LEASE_TTL, exc
                    )
                    return
                time.sleep(0.1 * 3**attempt)


def _expired(response: dict, fields: list[str]) -> bool:
    """Whether a lease read in `response` has lapsed: its stated expiry has passed on our clock,
    and LEASE_TTL seconds have passed since its last write on the store's clock."""
    try:
        expiry = float(fields[1])
    except (IndexError, ValueError):
        return True  # not a lease this code wrote: garbage, free to take
    if expiry > time.time():
        return False
    store_now = time.time()
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        with contextlib.suppress(TypeError, ValueError):
            store_now = parsedate_to_datetime(date[:29]).timestamp()
    return store_now - response["LastModified"].timestamp() > LEASE_TTL
