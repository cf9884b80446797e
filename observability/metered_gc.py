"""Garbage collection metrics: a proxy around the server's GarbageCollector (the endpoint and
the schedule both call it), so storage/gc.py stays free of them. Counted per run: its outcome,
what it deleted by kind, and the bytes reclaimed. Runs of the command line are not counted here:
they are their own process, and print their report."""

from __future__ import annotations

from typing import Any

from observability import metrics
from storage.gc import CollectionRunning, GarbageCollector, GcReport


class MeteredCollector:
    def __init__(self, inner: GarbageCollector) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def collect(self, *args: Any, **kwargs: Any) -> GcReport:
        return self._counted(self._inner.collect, *args, **kwargs)

    def purge_uploads(self, *args: Any, **kwargs: Any) -> GcReport:
        return self._counted(self._inner.purge_uploads, *args, **kwargs)

    @staticmethod
    def _counted(run: Any, *args: Any, **kwargs: Any) -> GcReport:
        try:
            report = run(*args, **kwargs)
        except CollectionRunning:
            metrics.gc_run("busy")
            raise
        except Exception:
            metrics.gc_run("error")
            raise
        if report.dry_run:
            metrics.gc_run("dry_run")
        else:
            removed = {kind: getattr(report, kind) for kind in metrics.GC_REMOVED_KINDS}
            metrics.gc_run("ok", removed, report.blob_bytes + report.upload_bytes)
        return report
