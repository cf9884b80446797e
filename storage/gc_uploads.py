"""Upload purge, part of garbage collection: sessions idle for longer than the upload TTL go with
their data, and on object stores their multipart uploads are aborted, as are multipart uploads
under the registry's prefix that no session owns (a process killed between creating one and
saving its state, or a lost answer to its creation)."""

from __future__ import annotations

import logging

from storage import paths
from storage.driver import ObjectBusy, ObjectNotFound, StorageDriver, StorageError
from storage.gc_scan import read_state, scan_uploads

log = logging.getLogger("berth.gc")


def purge_uploads(driver: StorageDriver, idle_before: float, report, progress) -> None:
    """Remove sessions whose last write is older than `idle_before` (the store's clock)."""
    progress.phase("uploads")
    uploads = scan_uploads(driver)
    live_multipart: set[str] = set()
    for upload in uploads.values():
        if upload.last_active >= idle_before:
            state = read_state(driver, upload.upload_id)
            if state is not None and state.writer:
                live_multipart |= driver.pending_upload_ids(state.writer)
            continue
        if report.dry_run:
            report.uploads += 1
            report.upload_bytes += upload.size
            continue
        if _purge(driver, upload.upload_id, idle_before):
            report.uploads += 1
            report.upload_bytes += upload.size
        else:
            state = read_state(driver, upload.upload_id)
            if state is not None and state.writer:
                live_multipart |= driver.pending_upload_ids(state.writer)
    for pending in driver.pending_uploads():
        if pending.upload_id in live_multipart or pending.started >= idle_before:
            continue
        report.multipart_uploads += 1
        if not report.dry_run:
            driver.abort_pending(pending)
            log.info(
                "garbage collection: aborted multipart upload %s at %s, owned by no session",
                pending.upload_id,
                pending.key,
            )


def _purge(driver: StorageDriver, upload_id: str, idle_before: float) -> bool:
    """Purge one idle session under its lock (a request writing it now keeps it)."""
    try:
        with driver.exclusive(paths.upload_lock(upload_id)):
            # Looked at again under the lock: a request may have just written it.
            if any(
                i.modified >= idle_before
                for i in driver.walk(paths.upload_dir(upload_id))
                if not i.key.endswith("/lock")
            ):
                return False
            state = read_state(driver, upload_id)
            if state is not None and state.writer is not None:
                try:
                    driver.append_writer(paths.upload_data(upload_id), resume=state.writer).abort()
                except ObjectNotFound:
                    pass  # its bytes already went to their final key, or were never written
                except StorageError as exc:
                    log.warning(
                        "garbage collection: upload %s: could not abort its writer: %s", upload_id, exc
                    )
            driver.delete_prefix(paths.upload_dir(upload_id))
    except (ObjectBusy, ObjectNotFound):
        return False
    log.info("garbage collection: purged idle upload %s", upload_id)
    return True
