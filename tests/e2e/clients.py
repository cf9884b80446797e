"""Real clients for the end-to-end tests: a private dockerd, a private containerd for `ctr`, and
skopeo/podman runners isolated from the machine's container state."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .process import (
    _Process,
    require_binary,
    run,
    short_tempdir,
    tail,
)


class DockerDaemon(_Process):
    """A private dockerd (vfs, no networking) with its own data/exec roots and socket."""

    name = "dockerd"

    def __init__(self, workdir: Path | None = None, daemon_config: dict | None = None):
        super().__init__(workdir or short_tempdir("e2e-dockerd-"))
        self.daemon_config = daemon_config or {}  # daemon.json (e.g. registry-mirrors)
        self.sock = self.workdir / "docker.sock"
        self.config_dir = self.workdir / "cli-config"
        self.config_dir.mkdir(exist_ok=True)
        self.cli = None

    @property
    def env(self) -> dict:
        env = dict(os.environ)
        env.update(DOCKER_HOST=f"unix://{self.sock}", DOCKER_CONFIG=str(self.config_dir))
        for k in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            env.pop(k, None)
        return env

    def start(self):
        dockerd = require_binary("dockerd", "/usr/sbin/dockerd", "/usr/bin/dockerd")
        # Debian's CLI matches the daemon; /usr/local/bin/docker may be another one.
        self.cli = require_binary("docker", "/usr/bin/docker")
        daemon_json = self.workdir / "daemon.json"
        daemon_json.write_text(json.dumps(self.daemon_config))
        cmd = [
            dockerd,
            "--config-file",
            daemon_json,
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--storage-driver=vfs",
            "--data-root",
            self.workdir / "data",
            "--exec-root",
            self.workdir / "exec",
            "-H",
            f"unix://{self.sock}",
            "--pidfile",
            self.workdir / "docker.pid",
        ]
        self._spawn(cmd, env=dict(os.environ), cwd=self.workdir)
        deadline = time.monotonic() + 60
        while True:
            self._check_alive()
            if self.sock.exists() and self.docker("version", check=False, timeout=10).returncode == 0:
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dockerd not ready after 60s; log:\n{tail(self.log_path)}")
            time.sleep(0.2)

    def docker(self, *args, timeout: float = 120, check: bool = True, input: str | None = None):
        return run([self.cli, *args], timeout=timeout, check=check, input=input, env=self.env)

    def login(self, host: str, creds):
        """`docker login` with the password on stdin (raises CommandError if refused)."""
        return self.docker(
            "login", "-u", creds.username, "--password-stdin", host, input=creds.password + "\n", timeout=60
        )

    def stop(self, timeout: float = 30) -> None:
        super().stop(timeout=timeout)


# --------------------------------------------------------------------------- containerd

CONTAINERD_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.metadata.v1.bolt"]
  content_sharing_policy = "isolated"
"""


class Containerd(_Process):
    """A private containerd for ``ctr`` (content is isolated per namespace)."""

    name = "containerd"

    def __init__(self, workdir: Path | None = None):
        super().__init__(workdir or short_tempdir("e2e-ctrd-"))
        self.sock = self.workdir / "containerd.sock"
        self.ctr_bin = None

    def start(self):
        containerd = require_binary("containerd", "/usr/bin/containerd")
        self.ctr_bin = require_binary("ctr", "/usr/bin/ctr")
        config = self.workdir / "config.toml"
        config.write_text(
            CONTAINERD_CONFIG.format(
                root=self.workdir / "root",
                state=self.workdir / "state",
                sock=self.sock,
                opt=self.workdir / "opt",
            )
        )
        self._spawn(
            [containerd, "--config", config, "--log-level", "warn"], env=dict(os.environ), cwd=self.workdir
        )
        deadline = time.monotonic() + 30
        while True:
            self._check_alive()
            if self.sock.exists() and self.ctr("version", check=False, timeout=10).returncode == 0:
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"containerd not ready after 30s; log:\n{tail(self.log_path)}")
            time.sleep(0.2)

    def ctr(self, *args, namespace: str = "default", timeout: float = 120, check: bool = True):
        return run(
            [self.ctr_bin, "--address", self.sock, "--namespace", namespace, *args],
            timeout=timeout,
            check=check,
        )


# --------------------------------------------------------------------------- skopeo / podman

_UNSHARE_SCRIPT = 'mount --bind "$1" /var/lib/containers && shift && exec "$@"'


class _ContainersTool:
    """Runs a containers/image tool with its own blob-info cache, auth file and registries.conf.

    As root the cache path is fixed (/var/lib/containers/cache), so the tool runs in a private
    mount namespace (``unshare -m``) with a temp dir bind-mounted over /var/lib/containers.
    Unprivileged, the cache lives under $XDG_DATA_HOME, which is pointed at a temp dir.
    """

    def __init__(self, workdir: Path, binary: str):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.var_lib = self.workdir / "var-lib-containers"
        self.var_lib.mkdir(exist_ok=True)
        self.auth_file = self.workdir / "auth.json"
        self.auth_file.write_text('{"auths": {}}')  # podman insists that the file exists
        self.policy = self.workdir / "policy.json"
        self.policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
        self.registries_conf = self.workdir / "registries.conf"
        self.registries_conf.write_text(
            'unqualified-search-registries = []\nshort-name-mode = "permissive"\n'
        )
        self.env = dict(os.environ)
        self.env.update(
            REGISTRY_AUTH_FILE=str(self.auth_file),
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
            XDG_DATA_HOME=str(self.workdir / "xdg-data"),
            XDG_RUNTIME_DIR=str(self.workdir / "xdg-run"),
            XDG_CONFIG_HOME=str(self.workdir / "xdg-config"),
            TMPDIR=str(self.workdir / "tmp"),
        )
        for d in ("xdg-data", "xdg-run", "xdg-config", "tmp"):
            (self.workdir / d).mkdir(exist_ok=True, mode=0o700)
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            unshare = require_binary("unshare", "/usr/bin/unshare")
            # The mount point must exist; creating an empty dir is harmless.
            os.makedirs("/var/lib/containers", exist_ok=True)
            self.prefix = [
                unshare,
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                _UNSHARE_SCRIPT,
                "sh",
                self.var_lib,
            ]

    def __call__(self, *args, timeout: float = 120, check: bool = True, input: str | None = None):
        return run(
            [*self.prefix, self.binary, *args], timeout=timeout, check=check, input=input, env=self.env
        )

    def blob_info_cache(self) -> Path:
        return self.var_lib / "cache" / "blob-info-cache-v1.boltdb"


class Skopeo(_ContainersTool):
    def __init__(self, workdir: Path):
        super().__init__(workdir, require_binary("skopeo", "/usr/bin/skopeo"))

    def __call__(self, *args, **kw):
        return super().__call__("--policy", self.policy, *args, **kw)


class Podman(_ContainersTool):
    """podman with private storage (vfs), run root, tmp dir and no events/journal."""

    def __init__(self, workdir: Path):
        super().__init__(workdir, require_binary("podman", "/usr/bin/podman"))
        self.storage_conf = self.workdir / "storage.conf"
        self.storage_conf.write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{self.workdir / "run"}"\ngraphroot = "{self.workdir / "root"}"\n'
        )
        self.containers_conf = self.workdir / "containers.conf"
        self.containers_conf.write_text('[engine]\nevents_logger = "none"\ncgroup_manager = "cgroupfs"\n')
        self.env.update(
            CONTAINERS_STORAGE_CONF=str(self.storage_conf), CONTAINERS_CONF=str(self.containers_conf)
        )

    def __call__(self, *args, **kw):
        base = [
            "--root",
            self.workdir / "root",
            "--runroot",
            self.workdir / "run",
            "--tmpdir",
            self.workdir / "libpod-tmp",
            "--storage-driver",
            "vfs",
            "--events-backend",
            "none",
            "--cgroup-manager",
            "cgroupfs",
        ]
        return super().__call__(*base, *args, **kw)
