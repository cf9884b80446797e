"""Berth: an OCI registry. `create_app(settings)` wires the parts; `app` is what gunicorn serves
(`gunicorn -c gunicorn.conf.py app:app`), built from the environment on first import."""

from __future__ import annotations

import logging

import falcon

import resources.errors
from auth.setup import build_auth
from observability import instance_dir, log_format, metrics
from observability.metered_driver import MeteredDriver
from observability.metered_gc import MeteredCollector
from observability.metered_pullthrough import MeteredPullThrough
from observability.request_fields import RequestFields
from observability.scrape import Scrape
from observability.usage_gauges import UsageBoard, UsageRefresher
from resources import ApiVersionHeader, add_metrics_route, add_routes, add_token_route
from resources.base import UnknownRoute
from resources.metrics import Metrics
from resources.router import RegexRouter
from settings import Settings, SettingsError
from storage import driver_from_settings
from storage.driver import StorageDriver, StorageError, StorageFull
from storage.gc import GarbageCollector
from storage.gc_schedule import GcSchedule
from storage.registry import Registry
from ui import add_ui
from upstream.pullthrough import PullThrough

log = logging.getLogger("berth")


def create_app(
    settings: Settings, driver: StorageDriver | None = None, *, background: bool = False
) -> falcon.App:
    """The app over the storage `settings` name (or `driver`, a seam for tests). `background`
    starts the storage usage walker (the server's entry point does; tests call it directly)."""
    obs = settings.observability
    driver = driver or driver_from_settings(settings)
    if obs.metrics_enabled:
        _count_s3_attempts(driver)
        driver = MeteredDriver(driver)
    try:
        driver.check()
    except StorageFull as exc:
        # Pulls can still be served; pushes get 507 until space is freed.
        log.warning("starting with storage that cannot take writes: %s", exc)
    registry = Registry(driver, gc_grace=settings.gc.grace, allow_sparse_index=settings.allow_sparse_index)
    auth_middleware, token_server = build_auth(settings)
    app = falcon.App(
        router=RegexRouter(fallback=UnknownRoute()),
        middleware=[RequestFields(), ApiVersionHeader(), auth_middleware],
    )
    # Query strings are read as sent: a comma in a value is not a list separator.
    app.req_options.auto_parse_qs_csv = False
    app.req_options.strip_url_path_trailing_slash = False
    resources.errors.register(app)
    pull_through = PullThrough.from_settings(registry, settings)
    if pull_through is not None and obs.metrics_enabled:
        pull_through = MeteredPullThrough(pull_through)
    collector = GarbageCollector(driver, settings.gc.grace, settings.gc.upload_ttl)
    if obs.metrics_enabled:
        collector = MeteredCollector(collector)
    add_routes(app, registry, settings, pull_through, collector)
    if settings.gc.interval:
        GcSchedule(collector, driver, settings.gc.interval, settings.gc.mode).start()
    if token_server is not None:
        add_token_route(app, token_server)
    usage = UsageBoard(instance_dir.current()) if obs.usage_interval else None
    if obs.metrics_enabled:
        add_metrics_route(app, Metrics(Scrape(usage), obs, settings.trusted_proxies))
    if background and obs.metrics_enabled:
        metrics.PER_REQUEST.start_flushing()  # this worker's per-request totals, for scrapes
    if background and usage is not None:
        refresher = UsageRefresher(
            registry, usage, obs.usage_interval, obs.usage_top_repositories, instance_dir.current()
        )
        refresher.start()
    if settings.ui:
        add_ui(app, registry, settings)  # the web pages under /ui/ (REGISTRY_UI)
    if not settings.auth_configured:
        log.warning(
            "no credentials configured: every request will be refused with 401. Set USERNAME "
            "and PASSWORD (read-write), READONLY_USERNAME and READONLY_PASSWORD (pull only), "
            "or ANONYMOUS_PULL=true."
        )
    return app


def _count_s3_attempts(driver: StorageDriver) -> None:
    from storage.drivers.s3 import S3Driver  # boto3 itself is imported only when S3 is used

    if isinstance(driver, S3Driver):
        from observability import s3_attempts

        s3_attempts.instrument(driver.client)  # this process's client (made after the fork)


def __getattr__(name: str) -> falcon.App:
    # `app` is built on first access (gunicorn's `app:app`), so importing create_app in tests
    # never reads the environment or touches ./data.
    if name != "app":
        raise AttributeError(name)
    try:
        settings = Settings.from_env()
        log_format.configure(settings.observability.log_format)  # unless gunicorn.conf.py did
        built = create_app(settings, background=True)
    except (SettingsError, StorageError) as exc:
        # One clear line instead of a traceback; exit code 3 makes gunicorn stop rather than
        # restart workers in a loop ("Worker failed to boot").
        log_format.configure("text")
        log.error("Berth cannot start: %s", exc)
        raise SystemExit(3) from None
    globals()["app"] = built
    return built
