"""Fixtures for the end-to-end tests with real clients.

Target registry: Berth (default) or, with ``E2E_TARGET=distribution``, CNCF
distribution 2.8 (Debian's ``docker-registry``), so the same tests can compare both.
"""

from __future__ import annotations

import itertools
import os
import shutil
import uuid

import pytest

from . import images
from . import process as servers
from .clients import Containerd, DockerDaemon, Podman, Skopeo
from .servers import BerthServer, DistributionServer

E2E_TARGET = os.environ.get("E2E_TARGET", "berth").strip().lower() or "berth"
TARGETS = {"berth": BerthServer, "distribution": DistributionServer}
PER_TEST_TIMEOUT = 180


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "e2e: end-to-end tests with real container clients (slow, need daemons)"
    )


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    has_timeout = config.pluginmanager.hasplugin("timeout")
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.e2e)
            if has_timeout and item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(PER_TEST_TIMEOUT))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when in ("call", "setup") and report.failed:
        for proc in list(servers.LIVE):
            report.sections.append((f"log of {proc.name} ({proc.log_path})", servers.tail(proc.log_path, 80)))
            access = getattr(proc, "access_log_path", None)
            if access:
                report.sections.append((f"access log of {proc.name}", servers.tail(access, 40)))


@pytest.fixture(scope="session")
def e2e_target() -> str:
    if E2E_TARGET not in TARGETS:
        pytest.fail(f"E2E_TARGET must be one of {sorted(TARGETS)}, not {E2E_TARGET!r}", pytrace=False)
    return E2E_TARGET


@pytest.fixture(scope="session")
def registry_class(e2e_target):
    return TARGETS[e2e_target]


@pytest.fixture
def make_registry(registry_class, tmp_path_factory):
    """Factory: start a registry of the target kind; all are stopped at teardown.

    Keyword arguments go to the server class (``data_dir``, ``auth``, ``port``; Berth also
    takes ``workers``, ``access_log``, ...; arguments a class does not know are dropped).
    """
    started = []

    def factory(**kwargs):
        import inspect

        accepted = inspect.signature(registry_class.__init__).parameters
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        kwargs.setdefault("workdir", tmp_path_factory.mktemp("registry"))
        server = registry_class(**kwargs)
        started.append(server)
        server.start()
        return server

    yield factory
    for s in reversed(started):
        s.stop()


# Berth's real-client flows run over both storage backends; S3 is moto's server over HTTP,
# behind a proxy that enforces R2's multipart rules.
STORAGES = ["filesystem", "s3"] if E2E_TARGET == "berth" else ["filesystem"]


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory):
    """moto's S3 server and the R2-strict proxy in front of it, with one bucket."""
    import boto3

    from .s3_servers import MotoServer, R2StrictProxy

    moto = MotoServer(tmp_path_factory.mktemp("moto")).start()
    proxy = R2StrictProxy(tmp_path_factory.mktemp("r2-proxy"), moto.port).start()
    boto3.client(
        "s3",
        endpoint_url=moto.url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket="berth-e2e")
    yield proxy
    proxy.stop()
    moto.stop()
    assert not proxy.violations, f"multipart uploads R2 would refuse: {proxy.violations}"


@pytest.fixture(scope="session")
def s3_env(moto_s3):
    """Settings for a Berth on the S3 endpoint; each call is a fresh key prefix (registry)."""

    def make(prefix: str | None = None) -> dict[str, str]:
        return {
            "REGISTRY_STORAGE": "s3",
            "REGISTRY_S3_BUCKET": "berth-e2e",
            "REGISTRY_S3_ENDPOINT_URL": moto_s3.url,
            "REGISTRY_S3_REGION": "us-east-1",
            "REGISTRY_S3_PREFIX": prefix or f"e2e-{uuid.uuid4().hex[:8]}",
            "REGISTRY_S3_PART_SIZE": str(5 * 1024 * 1024),
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
        }

    return make


@pytest.fixture(scope="session", params=STORAGES)
def registry(request, registry_class, tmp_path_factory):
    """The shared registry: basic auth (read-write + read-only users), 2 gevent workers, on
    each storage backend in turn."""
    kwargs = {"workdir": tmp_path_factory.mktemp("shared-registry"), "auth": True}
    if registry_class is BerthServer:
        kwargs.update(workers=2, access_log=True)
        if request.param == "s3":
            kwargs["extra_env"] = request.getfixturevalue("s3_env")()
    server = registry_class(**kwargs)
    server.start()
    yield server
    server.stop()


_counter = itertools.count()


@pytest.fixture
def repo(request) -> str:
    """A fresh repository name for this test."""
    base = request.node.name.split("[")[0].lower().replace("_", "-")[:40].strip("-")
    return f"e2e/{base}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def docker_daemon():
    d = DockerDaemon()
    d.start()
    yield d
    d.stop()
    shutil.rmtree(d.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def containerd():
    c = Containerd()
    c.start()
    yield c
    c.stop()
    shutil.rmtree(c.workdir, ignore_errors=True)


@pytest.fixture
def skopeo(tmp_path_factory) -> Skopeo:
    return Skopeo(tmp_path_factory.mktemp("skopeo"))


@pytest.fixture
def podman(tmp_path_factory):
    p = Podman(tmp_path_factory.mktemp("podman"))
    yield p
    # vfs layers are plain files but podman may leave read-only dirs behind: best effort.
    shutil.rmtree(p.workdir, ignore_errors=True)


@pytest.fixture
def loaded_image(docker_daemon, skopeo, tmp_path, repo):
    """An image built here, converted to a docker-archive by skopeo, loaded into dockerd."""
    img = images.make_image(1 << 20, n_layers=2)
    src = images.write_oci_layout(tmp_path / "oci", img, "v1")
    local = f"e2e-local/{repo.rsplit('/', 1)[-1]}:v1"
    archive = tmp_path / "image.tar"
    skopeo("copy", src, f"docker-archive:{archive}:{local}")
    out = docker_daemon.docker("load", "-i", archive).stdout
    assert "Loaded image" in out, out
    assert (
        docker_daemon.docker("image", "inspect", "--format", "{{.Id}}", local).stdout.strip()
        == img.config_digest
    )
    yield img, local
    docker_daemon.docker("rmi", "-f", img.config_digest, check=False)
