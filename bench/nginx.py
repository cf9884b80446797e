"""Debian's nginx in the bench: a static file server (the reference a registry's download is held
to) and, with --via-nginx, a TLS-terminating reverse proxy in front of each registry running the
shipped deploy/nginx.conf.

The proxy configuration is rendered from deploy/nginx.conf as tests/e2e/nginx.py does: only the
listen address, file paths, certificate and upstream server change, and rendering fails if one
of the replaced lines is missing or repeated, so the bench cannot drift from the shipped file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from common import REPO_ROOT, BenchError
from processes import Registry, free_port

NGINX = "/usr/sbin/nginx"
DEPLOY_CONF = REPO_ROOT / "deploy" / "nginx.conf"
# The shipped upstream line (the first instance), replaced by the registry under test.
_UPSTREAM_SERVER = re.compile(r"^(?P<indent>[ \t]*)server 127\.0\.0\.1:5000(?P<params>[^;\n]*);$", re.M)
# Debian's temp paths are under /var/lib/nginx: a private nginx keeps its own.
_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def _user_line() -> str:
    # root: the workers must read files in the bench's 0700 temp dir (ignored when not root)
    return "user root;" if os.geteuid() == 0 else "# user: not root, nginx keeps this user"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for 127.0.0.1 (and localhost): (cert, key). Clients
    trust the certificate itself (curl --cacert cert)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "server.crt", directory / "server.key"
    proc = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise BenchError(f"openssl req failed: {proc.stderr.decode(errors='replace')}")
    return cert, key


def render_proxy_config(workdir: Path, port: int, upstream: str, cert: Path, key: str | Path) -> str:
    """deploy/nginx.conf on https://127.0.0.1:`port`, in front of `upstream` (host:port)."""
    w = workdir
    text = DEPLOY_CONF.read_text()
    replacements = [
        ("user www-data;", _user_line()),
        ("pid /run/nginx.pid;", f"pid {w}/nginx.pid;"),
        ("error_log /var/log/nginx/error.log;", f"error_log {w}/error.log;"),
        ("access_log /var/log/nginx/berth-access.log berth;", f"access_log {w}/access.log berth;"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        ("/etc/ssl/berth/registry.crt;", f"{cert};"),
        ("/etc/ssl/berth/registry.key;", f"{key};"),
        ("http {\n", "http {\n" + "".join(f"    {k}_temp_path {w}/{k};\n" for k in _TEMP_KINDS)),
    ]
    for old, new in replacements:
        count = text.count(old)
        if count != 1:
            raise BenchError(f"{DEPLOY_CONF}: expected {old!r} once, found it {count} times")
        text = text.replace(old, new)
    if len(_UPSTREAM_SERVER.findall(text)) != 1:
        raise BenchError(f"{DEPLOY_CONF}: expected one active `server 127.0.0.1:5000 ...;` line")
    return _UPSTREAM_SERVER.sub(lambda m: f"{m['indent']}server {upstream}{m['params']};", text)


def render_static_config(workdir: Path, port: int, root: Path, tls: tuple[Path, Path] | None) -> str:
    """nginx serving the files in `root` the fastest way for a client on the same machine: read
    into 256 KiB buffers, not sendfile (which hands the client cold page-cache pages: about
    1.2 GB/s here against 1.7-2.3), one worker per core. With `tls`, over
    HTTPS with the shipped configuration's protocols and session cache."""
    w = workdir
    listen = f"listen 127.0.0.1:{port}"
    ssl = ""
    if tls:
        listen += " ssl"
        ssl = (
            f"        ssl_certificate     {tls[0]};\n        ssl_certificate_key {tls[1]};\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;\n"
            "        ssl_session_cache shared:static_tls:10m;\n        ssl_session_timeout 1h;\n"
        )
    return (
        f"{_user_line()}\ndaemon off;\nmaster_process on;\nworker_processes auto;\n"
        f"pid {w}/nginx.pid;\nerror_log {w}/error.log;\n"
        "events {\n    worker_connections 4096;\n}\n"
        "http {\n"
        + "".join(f"    {k}_temp_path {w}/{k};\n" for k in _TEMP_KINDS)
        + "    access_log off;\n    server_tokens off;\n"
        "    sendfile off;\n    output_buffers 2 256k;\n    default_type application/octet-stream;\n"
        f"    server {{\n        {listen};\n{ssl}        root {root};\n"
        "        location / {\n        }\n    }\n}\n"
    )


def _start(name: str, workdir: Path, config: str, scheme: str, port: int, daemon_flag: bool) -> Registry:
    if not Path(NGINX).exists():
        raise BenchError(f"{NGINX} not found: apt-get install -y nginx")
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(config)
    log_path = workdir / "error.log"
    # -e: the error log before the configuration is read (Debian's default is under /var/log)
    cmd = [NGINX, "-p", str(workdir), "-c", str(conf), "-e", str(log_path)]
    if daemon_flag:
        cmd += ["-g", "daemon off;"]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Registry(name, f"{scheme}://127.0.0.1:{port}", None, proc, proc.pid, log_path)


def start_static(work: Path, root: Path, tls: tuple[Path, Path] | None) -> Registry:
    """nginx serving root/ (the blob files); its URL for a file is f"{url}/{name}"."""
    port = free_port()
    workdir = work / "nginx-static"
    config = render_static_config(workdir, port, root, tls)
    reg = _start("nginx", workdir, config, "https" if tls else "http", port, daemon_flag=False)
    reg.ca = tls[0] if tls else None
    return reg


def start_proxy(work: Path, reg: Registry, tls: tuple[Path, Path]) -> Registry:
    """deploy/nginx.conf in front of `reg`; afterwards reg.url is the proxy's (https) URL, reg.pid
    stays the registry's, reg.proxy is the nginx (stopped with the registry)."""
    upstream = reg.url.split("://", 1)[1].rstrip("/")
    port = free_port()
    workdir = work / f"nginx-proxy-{reg.name}"
    config = render_proxy_config(workdir, port, upstream, *tls)
    proxy = _start(f"nginx-{reg.name}", workdir, config, "https", port, daemon_flag=True)
    proxy.ca = tls[0]
    reg.proxy, reg.url, reg.ca = proxy, proxy.url, tls[0]
    return proxy


def nginx_version() -> str:
    if shutil.which(NGINX) is None:
        return ""
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, check=False).stderr
    return out.strip().removeprefix("nginx version: ")
