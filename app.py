"""Berth: an OCI registry. `create_app(settings)` wires the parts; `app` is what gunicorn serves
(`gunicorn -c gunicorn.conf.py app:app`), built from the environment on first import."""

from __future__ import annotations

import logging

import falcon

import resources.errors
from auth.setup import build_auth
from resources import ApiVersionHeader, add_routes, add_token_route
from resources.base import UnknownRoute
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


def create_app(settings: Settings, driver: StorageDriver | None = None) -> falcon.App:
    """The app over the storage `settings` name (or `driver`, a seam for tests)."""
    driver = driver or driver_from_settings(settings)
    try:
        driver.check()
    except StorageFull as exc:
        # Pulls can still be served; pushes get 507 until space is freed.
        log.warning("starting with storage that cannot take writes: %s", exc)
    registry = Registry(driver, gc_grace=settings.gc.grace, allow_sparse_index=settings.allow_sparse_index)
    auth_middleware, token_server = build_auth(settings)
    app = falcon.App(
        router=RegexRouter(fallback=UnknownRoute()),
        middleware=[ApiVersionHeader(), auth_middleware],
    )
    # Query strings are read as sent: a comma in a value is not a list separator.
    app.req_options.auto_parse_qs_csv = False
    app.req_options.strip_url_path_trailing_slash = False
    resources.errors.register(app)
    collector = GarbageCollector(driver, settings.gc.grace, settings.gc.upload_ttl)
    add_routes(app, registry, settings, PullThrough.from_settings(registry, settings), collector)
    if settings.gc.interval:
        GcSchedule(collector, driver, settings.gc.interval, settings.gc.mode).start()
    if token_server is not None:
        add_token_route(app, token_server)
    if settings.ui:
        add_ui(app, registry, settings)  # the web pages under /ui/ (REGISTRY_UI)
    if not settings.auth_configured:
        log.warning(
            "no credentials configured: every request will be refused with 401. Set USERNAME "
            "and PASSWORD (read-write), READONLY_USERNAME and READONLY_PASSWORD (pull only), "
            "or ANONYMOUS_PULL=true."
        )
    return app


def __getattr__(name: str) -> falcon.App:
    # `app` is built on first access (gunicorn's `app:app`), so importing create_app in tests
    # never reads the environment or touches ./data.
    if name != "app":
        raise AttributeError(name)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        built = create_app(Settings.from_env())
    except (SettingsError, StorageError) as exc:
        # One clear line instead of a traceback; exit code 3 makes gunicorn stop rather than
        # restart workers in a loop ("Worker failed to boot").
        log.error("Berth cannot start: %s", exc)
        raise SystemExit(3) from None
    globals()["app"] = built
    return built
