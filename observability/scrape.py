"""What `GET /metrics` returns: the metrics of every worker of this instance, summed by
prometheus-client's multiprocess collector when gunicorn.conf.py set up the instance's
directory (this process's own registry otherwise), each process's memory and CPU, and the
storage usage gauges. Nothing here walks storage: a scrape reads the workers' metric files,
/proc and one small JSON file."""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from observability import metrics
from observability.instance_dir import MULTIPROC_ENV
from observability.process_metrics import ProcessCollector
from observability.usage_gauges import UsageBoard, UsageCollector


class _ThisProcess:
    """The process's default registry, as one collector among the others."""

    def collect(self) -> Iterator:
        yield from REGISTRY.collect()


class Scrape:
    def __init__(self, usage: UsageBoard | None) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        multiprocess_dir = os.environ.get(MULTIPROC_ENV)
        if multiprocess_dir:
            MultiProcessCollector(self._registry, path=multiprocess_dir)
        else:
            self._registry.register(_ThisProcess())
        self._registry.register(metrics.PER_REQUEST)
        self._registry.register(ProcessCollector(under_gunicorn=bool(multiprocess_dir)))
        if usage is not None:
            self._registry.register(UsageCollector(usage))

    def __call__(self, accept: str | None = None) -> tuple[bytes, str]:
        """The text format, or OpenMetrics when the scraper's Accept asks for it; and its
        content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self._registry), content_type
