"""A private nginx (Debian's package) as the reverse proxy in front of Berth instances."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from .process import _Process, free_port, require_binary

# What a registry needs from its proxy: no body size limit, no buffering of uploads or downloads,
# HTTP/1.1 with keep-alive to the upstream, long timeouts, the client's Host passed on.
SERVER_BLOCK = """
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $http_host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_read_timeout 900s;
    proxy_send_timeout 900s;
    location /v2/ {{ proxy_pass http://berth; }}
"""


class Nginx(_Process):
    name = "nginx"

    def __init__(self, workdir: Path, upstreams: list[str]) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.upstreams = upstreams

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def config(self) -> str:
        servers = "".join(f"        server {u};\n" for u in self.upstreams)
        w = self.workdir
        return f"""
worker_processes 1;
daemon off;
user root;
pid {w}/nginx.pid;
error_log {w}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {w}/access.log;
    client_body_temp_path {w}/body;
    proxy_temp_path {w}/proxy;
    fastcgi_temp_path {w}/fastcgi;
    uwsgi_temp_path {w}/uwsgi;
    scgi_temp_path {w}/scgi;
    upstream berth {{
{servers}        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{self.port};
{SERVER_BLOCK.format()}
    }}
}}
"""

    def start(self):
        binary = require_binary("nginx", "/usr/sbin/nginx")
        conf = self.workdir / "nginx.conf"
        conf.write_text(self.config())
        self._spawn([binary, "-c", conf, "-p", self.workdir])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                requests.get(f"{self.url}/v2/", timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError(f"nginx did not start: {(self.workdir / 'error.log').read_text()}")
