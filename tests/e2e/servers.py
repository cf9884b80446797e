"""Registries the end-to-end tests run: Berth under a real gunicorn, and CNCF distribution."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import requests

from .process import (
    REPO_ROOT,
    RO,
    RW,
    Creds,
    _Process,
    free_port,
    require_binary,
    run,
    tail,
)


class Registry(_Process):
    """Common interface of the registries under test."""

    kind = "registry"
    supports_readonly_user = False
    is_gunicorn = False
    checks_content_range = True  # out-of-order PATCH -> 416

    def __init__(
        self, workdir: Path, data_dir: Path | None = None, auth: bool = True, port: int | None = None
    ):
        super().__init__(workdir)
        self.data_dir = Path(data_dir) if data_dir else self.workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.auth = auth
        self.port = port or free_port()
        self.rw = RW
        self.ro = RO

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                r = requests.get(f"{self.url}/v2/", timeout=2)
                if r.status_code in (200, 401):
                    return
                last = f"status {r.status_code}"
            except requests.RequestException as e:
                last = repr(e)
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout}s ({last}); log:\n{tail(self.log_path)}")

    def session(self, creds: Creds | None = None) -> requests.Session:
        s = requests.Session()
        creds = creds if creds is not None else (self.rw if self.auth else None)
        if creds is not None:
            s.auth = creds.tuple
        return s


class BerthServer(Registry):
    """Berth under gunicorn (``gunicorn -c gunicorn.conf.py -b 127.0.0.1:PORT -w N app:app``)."""

    kind = "berth"
    supports_readonly_user = True
    is_gunicorn = True

    def __init__(
        self,
        workdir: Path,
        data_dir: Path | None = None,
        auth: bool = True,
        workers: int = 2,
        port: int | None = None,
        access_log: bool = False,
        extra_env: dict | None = None,
        anonymous_pull: bool = False,
        delete_enabled: bool = True,
        cwd: Path = REPO_ROOT,
        app: str = "app:app",
        config: str | None = "gunicorn.conf.py",
    ):
        super().__init__(workdir, data_dir, auth, port)
        self.name = f"berth-{self.port}"
        self.log_path = self.workdir / f"{self.name}.log"
        self.workers = workers
        self.access_log_path = self.workdir / f"{self.name}-access.log" if access_log else None
        self.cwd = Path(cwd)
        self.app = app
        self.config = config
        self.env = dict(os.environ)
        for k in ("USERNAME", "PASSWORD", "READONLY_USERNAME", "READONLY_PASSWORD"):
            self.env.pop(k, None)
        self.env.update(
            REGISTRY_DATA_DIR=str(self.data_dir),
            ANONYMOUS_PULL="true" if anonymous_pull else "false",
            REGISTRY_DELETE_ENABLED="true" if delete_enabled else "false",
            PYTHONUNBUFFERED="1",
        )
        if auth:
            self.env.update(
                USERNAME=RW.username,
                PASSWORD=RW.password,
                READONLY_USERNAME=RO.username,
                READONLY_PASSWORD=RO.password,
            )
        self.env.update(extra_env or {})

    @staticmethod
    def gunicorn_path() -> str:
        return require_binary("gunicorn", str(Path(sys.executable).parent / "gunicorn"))

    def start(self):
        cmd = [self.gunicorn_path()]
        if self.config:
            cmd += ["-c", self.config]
        cmd += ["-b", self.host, "-w", str(self.workers)]
        if self.access_log_path is not None:
            cmd += ["--access-logfile", self.access_log_path, "--access-logformat", "%(p)s %(r)s %(s)s"]
        cmd.append(self.app)
        self._spawn(cmd, env=self.env, cwd=self.cwd)
        self.wait_ready()
        return self

    def worker_pids(self) -> set[int]:
        """PIDs of the gunicorn workers (children of the master)."""
        if not self.proc:
            return set()
        master = self.proc.pid
        pids = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == master:
                pids.add(int(stat.parent.name))
        return pids


DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: {secret}
  headers:
    X-Content-Type-Options: [nosniff]
{auth}"""


class DistributionServer(Registry):
    """CNCF distribution 2.8 (Debian's ``docker-registry``), filesystem storage, deletes on."""

    kind = "distribution"
    supports_readonly_user = False  # htpasswd auth has no authorization: any user may push
    checks_content_range = False  # 2.8 ignores Content-Range on PATCH and appends the body

    def __init__(
        self,
        workdir: Path,
        data_dir: Path | None = None,
        auth: bool = True,
        port: int | None = None,
        secret: str = "berth-e2e-shared-secret",  # noqa: S107 - distribution http.secret, test only
    ):
        super().__init__(workdir, data_dir, auth, port)
        self.name = f"distribution-{self.port}"
        self.log_path = self.workdir / f"{self.name}.log"
        self.secret = secret

    def start(self):
        binary = require_binary("docker-registry", "/usr/bin/docker-registry")
        auth = ""
        if self.auth:
            htpasswd_bin = require_binary("htpasswd", "/usr/bin/htpasswd")
            htpasswd = self.workdir / "htpasswd"
            run([htpasswd_bin, "-Bbc", htpasswd, RW.username, RW.password], timeout=30)
            run([htpasswd_bin, "-Bb", htpasswd, RO.username, RO.password], timeout=30)
            auth = f"auth:\n  htpasswd:\n    realm: basic-realm\n    path: {htpasswd}\n"
        config = self.workdir / f"config-{self.port}.yml"
        config.write_text(
            DISTRIBUTION_CONFIG.format(root=self.data_dir, addr=self.host, secret=self.secret, auth=auth)
        )
        env = dict(os.environ)
        env.pop("REGISTRY_HTTP_ADDR", None)
        self._spawn([binary, "serve", config], env=env, cwd=self.workdir)
        self.wait_ready()
        return self


# --------------------------------------------------------------------------- docker
