"""How fast the web UI's pages render: a repository with --tags tags (1,000 by default, each a
distinct image with its own config), --repositories more repositories for the list page, on
local disk, served by Berth under gunicorn (one gevent worker, so every request meets the same
caches). Each page is fetched once right after the content is pushed (cold: no summary cached
in the worker, the OS page cache warm from the pushes) and then --repeat times (warm), over one
keep-alive connection; the time is from sending the request to the last byte of the body.

    .venv/bin/python bench/ui.py                      # 1,000 tags, 200 repositories, 20 repeats
    .venv/bin/python bench/ui.py --tags 5000 --repeat 5

Markdown table on stdout, progress on stderr. Standard library only."""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from common import REPO_ROOT, VENV_BIN, BenchError, log
from processes import start_berth, stop_registry, wait_ready

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


class Client:
    def __init__(self, url: str, auth: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        self.headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}

    def request(self, method: str, path: str, body: bytes | None = None, **headers: str) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers={**self.headers, **headers})
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def blob(self, repo: str, data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, text = self.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data)
        if status != 201:
            raise BenchError(f"blob push answered {status}: {text[:200]!r}")
        return {"digest": digest, "size": len(data)}

    def image(self, repo: str, tag: str, layer: dict, number: int) -> None:
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "created": f"2025-01-01T00:00:{number % 60:02d}Z",
                "config": {"Env": [f"BUILD={number}"], "Cmd": ["/app"]},
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
                "history": [{"created_by": f"COPY app /app # {number}"}],
            }
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, **self.blob(repo, config)},
                "layers": [{"mediaType": OCI_LAYER, **layer}],
            }
        ).encode()
        status, text = self.request(
            "PUT", f"/v2/{repo}/manifests/{tag}", manifest, **{"Content-Type": OCI_MANIFEST}
        )
        if status != 201:
            raise BenchError(f"manifest push answered {status}: {text[:200]!r}")

    def timed(self, path: str) -> tuple[float, int]:
        start = time.perf_counter()
        status, body = self.request("GET", path)
        elapsed = time.perf_counter() - start
        if status != 200:
            raise BenchError(f"GET {path} answered {status}: {body[:300]!r}")
        return elapsed, len(body)


def populate(client: Client, tags: int, repositories: int) -> None:
    layer = client.blob("bench/app", b"\x1f\x8b" + b"layer" * 2000)
    started = time.monotonic()
    for i in range(tags):
        client.image("bench/app", f"1.{i // 100}.{i % 100}", layer, i)
    log(f"pushed {tags} images to bench/app in {time.monotonic() - started:.1f} s")
    for r in range(repositories):
        name = f"team{r % 10}/service-{r:04d}"
        client.request("POST", f"/v2/{name}/blobs/uploads/?mount={layer['digest']}&from=bench/app")
        for t in range(3):
            client.image(name, f"v{t}", layer, r * 3 + t)
    log(f"pushed {repositories} more repositories")


def measure(client: Client, path: str, repeat: int) -> dict:
    cold, size = client.timed(path)
    warm = [client.timed(path)[0] for _ in range(repeat)]
    return {"path": path, "bytes": size, "cold": cold, "warm": warm}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tags", type=int, default=1000)
    parser.add_argument("--repositories", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="berth-ui-bench-") as work:
        berth = start_berth(Path(work), REPO_ROOT, VENV_BIN, workers=1)
        try:
            wait_ready(berth)
            client = Client(berth.url, berth.push_auth)
            populate(client, args.tags, args.repositories)
            last = f"1.{(args.tags - 1) // 100}.{(args.tags - 1) % 100}"
            pages = [
                ("repository, by name", "/ui/r/bench/app"),
                ("repository, newest first", "/ui/r/bench/app?sort=newest"),
                ("repository list (50 of them)", "/ui/"),
                ("repository list, filtered", "/ui/?q=service-01"),
                ("image", f"/ui/r/bench/app/-/image/{last}"),
            ]
            results = []
            for label, path in pages:
                results.append((label, measure(client, path, args.repeat)))
                log(f"{label}: done")
        finally:
            stop_registry(berth)
    print(
        f"\n{args.tags} tags in bench/app, {args.repositories} more repositories of 3 tags; "
        f"one gunicorn gevent worker; {args.repeat} warm repeats\n"
    )
    print("| page | size | cold (first request) | warm min | warm median | warm max |")
    print("|---|---|---|---|---|---|")
    for label, r in results:
        warm = r["warm"]
        print(
            f"| {label} (`{r['path']}`) | {r['bytes'] / 1024:.0f} KiB | {r['cold'] * 1000:.0f} ms | "
            f"{min(warm) * 1000:.0f} ms | {statistics.median(warm) * 1000:.0f} ms | {max(warm) * 1000:.0f} ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
