"""The servers under test: start Berth (gunicorn), CNCF distribution and moto_server, wait for
them, stop their process groups, and find a server's process tree in /proc."""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from common import VENV_BIN, BenchError, log


@dataclass
class Registry:
    name: str
    url: str  # http://127.0.0.1:PORT
    push_auth: str | None = None  # "user:password" for curl -u on push requests
    proc: subprocess.Popen | None = None
    pid: int | None = None  # root of the process tree to sample
    log_path: Path | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    ca: Path | None = None  # https URL: the certificate clients verify it with (curl --cacert)
    proxy: Registry | None = None  # --via-nginx: the nginx in front (url is then the proxy's)

    def add(self, key: str, value: float | None) -> None:
        if value is not None:
            self.samples.setdefault(key, []).append(value)

    def log_tail(self, n: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:]) or "(empty log)"


def process_tree(root: int) -> list[int]:
    """root and all its descendants, via /proc/<pid>/task/*/children (no psutil)."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        if not Path(f"/proc/{pid}").exists():
            continue
        pids.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return pids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_distribution(work: Path, binary: str, storage: str | None = None) -> Registry:
    """storage: the YAML under distribution's `storage:`, indented by 2 (default: filesystem in
    <work>/distribution-data)."""
    if shutil.which(binary) is None:
        raise BenchError(f"{binary} not found: apt-get install -y docker-registry")
    port = free_port()
    if storage is None:
        data = work / "distribution-data"
        data.mkdir()
        storage = f"  filesystem:\n    rootdirectory: {data}\n"
    config = work / "distribution.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n{storage}"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    # Debian's build wraps the HTTP transport; with AWS_CA_BUNDLE set, its aws-sdk-go then
    # panics at start ("unable to load custom CA bundle, HTTPClient's transport unsupported type").
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    log_path = work / "distribution.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [binary, "serve", str(config)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Registry("distribution", f"http://127.0.0.1:{port}", None, proc, proc.pid, log_path)


def start_berth(
    work: Path,
    repo_root: Path,
    venv_bin: Path,
    workers: int | None,
    extra_env: dict[str, str] | None = None,
) -> Registry:
    if not (repo_root / "app.py").exists():
        raise BenchError(f"{repo_root / 'app.py'} does not exist (Berth not landed yet?)")
    gunicorn = venv_bin / "gunicorn"
    if not gunicorn.exists():
        raise BenchError(f"{gunicorn} not found")
    port = free_port()
    data = work / "berth-data"
    data.mkdir()
    password = secrets.token_urlsafe(18)
    env = dict(os.environ)
    env.update(
        ANONYMOUS_PULL="true",
        USERNAME="bench",
        PASSWORD=password,
        REGISTRY_DATA_DIR=str(data),
    )
    env.update(extra_env or {})  # e.g. REGISTRY_STORAGE=s3 and its settings (bench_s3.py)
    cmd = [str(gunicorn), "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}"]
    if workers:
        cmd += ["-w", str(workers)]
    cmd.append("app:app")
    log_path = work / "berth.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=repo_root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Registry(
        "berth",
        f"http://127.0.0.1:{port}",
        f"bench:{password}",
        proc,
        proc.pid,
        log_path,
    )


def start_moto(work: Path) -> Registry:
    binary = VENV_BIN / "moto_server"
    if not binary.exists():
        raise BenchError(f"{binary} not found (pip install 'moto[server]' into the venv)")
    port = free_port()
    spill = work / "moto-tmp"  # moto spools objects over ~5 MiB to temp files: keep them here
    spill.mkdir()
    log_path = work / "moto.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(port)],
            env={**os.environ, "TMPDIR": str(spill)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Registry("moto", f"http://127.0.0.1:{port}", None, proc, proc.pid, log_path)


def wait_ready(reg: Registry, timeout: float = 30.0) -> None:
    """Wait until GET /v2/ gets any HTTP answer below 500 (401 counts: it is up)."""
    parsed = urllib.parse.urlsplit(reg.url)
    tls = ssl.create_default_context(cafile=reg.ca) if parsed.scheme == "https" else None
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if reg.proc is not None and reg.proc.poll() is not None:
            raise BenchError(
                f"{reg.name} exited with status {reg.proc.returncode} during start:\n{reg.log_tail()}"
            )
        try:
            if tls is None:
                conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=2)
            else:
                conn = http.client.HTTPSConnection(parsed.hostname, parsed.port, timeout=2, context=tls)
            conn.request("GET", "/v2/")
            status = conn.getresponse().status
            conn.close()
            if status < 500:
                # gunicorn may still be forking workers; give them a moment to settle.
                time.sleep(0.5)
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"{reg.name} not ready at {reg.url} after {timeout}s ({last}):\n{reg.log_tail()}")


def stop_registry(reg: Registry) -> None:
    if reg.proxy is not None:
        stop_registry(reg.proxy)
    proc = reg.proc
    if proc is None:
        return
    pgid = proc.pid  # start_new_session=True: the registry leads its own process group
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            log(f"{reg.name} did not stop on SIGTERM, sending SIGKILL")
    with contextlib.suppress(ProcessLookupError):  # anything left in the group (workers) goes too
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
