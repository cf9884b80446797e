"""Many requests at once: N parallel blob downloads from one curl process, and manifest GET/HEAD
by tag at N connections with wrk and ab (after pushing a small OCI image to each registry)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import tarfile
from pathlib import Path

from common import BenchError
from processes import Registry
from transfers import REPO_NAME, auth_args, curl, curl_base, expect, upload_monolithic

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
TAG = "bench"


def parallel_download(reg: Registry, url: str, size: int, n: int, work: Path) -> None:
    """n GETs of url at once from one curl process (one connection each, all opened at the
    start), bodies to /dev/null; every transfer must answer 200 with all `size` bytes."""
    cmd = [*curl_base(reg), "--parallel", "--parallel-immediate", "--parallel-max", str(n)]
    cmd += ["-w", "%{http_code} %{size_download}\\n"]  # curl prints it after each transfer
    for _ in range(n):
        cmd += ["-o", "/dev/null", url]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    results = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    good = sum(1 for r in results if r == ["200", str(size)])
    if proc.returncode != 0 or good != n:
        bad = sorted({" ".join(r) for r in results if r != ["200", str(size)]})
        raise BenchError(
            f"{reg.name}: {good}/{n} parallel downloads complete (curl exit {proc.returncode}; "
            f"other results {bad[:5]}): {proc.stderr.strip()[:500]}"
        )


# --------------------------------------------------------------------------- a small OCI image


def _layer() -> tuple[bytes, str]:
    """A real gzipped tar with one small file, and its diff_id (digest of the plain tar)."""
    data = b"berth bench layer\n"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("bench.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0), "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()


def _push_blob(reg: Registry, data: bytes, name: str, work: Path) -> dict:
    path = work / name
    path.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    upload_monolithic(reg, path, digest, work)
    return {"digest": digest, "size": len(data)}


def manifest_url(reg: Registry) -> str:
    return f"{reg.url}/v2/{REPO_NAME}/manifests/{TAG}"


def push_image(reg: Registry, work: Path) -> str:
    """Push config + one layer + an OCI image manifest tagged TAG; check GET and HEAD by tag
    (with the Accept header wrk sends) answer 200 with it. Returns the manifest's digest."""
    layer, diff_id = _layer()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG}
        | _push_blob(reg, json.dumps(config).encode(), "image-config.json", work),
        "layers": [{"mediaType": OCI_LAYER} | _push_blob(reg, layer, "image-layer.tar.gz", work)],
    }
    body = json.dumps(manifest, indent=3).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    path = work / "image-manifest.json"
    path.write_bytes(body)
    res = curl(
        reg,
        ["-X", "PUT", *auth_args(reg), "-H", f"Content-Type: {OCI_MANIFEST}",
         "--data-binary", f"@{path}", manifest_url(reg)],
        work,
    )  # fmt: skip
    expect(res, 201, f"{reg.name} PUT manifest")
    for method in ("GET", "HEAD"):
        args = ["-I"] if method == "HEAD" else []
        res = curl(reg, [*args, "-H", f"Accept: {OCI_MANIFEST}", manifest_url(reg)], work)
        expect(res, 200, f"{reg.name} {method} manifest by tag")
        got = (res.headers.get("docker-content-digest"), res.headers.get("content-type"))
        length = res.headers.get("content-length")
        if (
            got != (digest, OCI_MANIFEST)
            or length != str(len(body))
            or (method == "GET" and res.body != body)
        ):
            raise BenchError(f"{reg.name} {method} manifest: digest/type {got}, length {length}")
    return digest


# --------------------------------------------------------------------------- wrk and ab

# wrk counts every response outside 200-299 here (its own "Non-2xx or 3xx" line counts >= 400).
WRK_SCRIPT = """\
wrk.method = "GET"
wrk.headers["Accept"] = "{accept}"
{close}
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) non2xx = 0 end
function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("non2xx") end
  io.write(string.format("bench-non2xx %d\\n", n))
end
"""


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()} {proc.stdout[-800:]}")
    return proc.stdout


def _match(pattern: str, out: str) -> re.Match:
    m = re.search(pattern, out, re.M)
    if not m:
        raise BenchError(f"no {pattern!r} in the load tool's output:\n{out[-1500:]}")
    return m


def _ab_head(reg: Registry, close: bool, args) -> dict:
    """HEAD with ab, from --load-threads ab processes (as many as wrk's threads; ab has one), the
    connections split between them. ab -i sends HEAD, as HTTP/1.0 (-k: with Connection: Keep-Alive); it does
    not check certificates (the --via-nginx proxy's is self-signed); -r: count receive errors and
    go on. -n after -t is a cap (ab's default under -t is 50000), sized for 100k req/s; ab
    allocates a few dozen bytes per request of it up front."""
    procs = []
    n = max(1, min(args.load_threads, args.connections))
    for i in range(n):
        conns = args.connections // n + (1 if i < args.connections % n else 0)
        cmd = ["ab", "-q", "-r", "-t", str(args.rps_seconds), "-n", str(args.rps_seconds * 100_000)]
        cmd += ["-c", str(conns), "-i", *(["-H", "Connection: close"] if close else ["-k"])]
        cmd += ["-H", f"Accept: {OCI_MANIFEST}", manifest_url(reg)]
        procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise BenchError(f"ab failed ({[p.returncode for p in procs]}): {outs}")
    result = {"rps": 0.0, "requests": 0, "non2xx": 0, "errors": 0, "output": "\n".join(outs)}
    for out in outs:
        non2xx = re.search(r"^Non-2xx responses:\s+(\d+)", out, re.M)  # only there when > 0
        result["rps"] += float(_match(r"^Requests per second:\s+([\d.]+)", out)[1])
        result["requests"] += int(_match(r"^Complete requests:\s+(\d+)", out)[1])
        result["non2xx"] += int(non2xx[1]) if non2xx else 0
        result["errors"] += int(_match(r"^Failed requests:\s+(\d+)", out)[1])
    return result


def manifest_load(reg: Registry, method: str, close: bool, args, work: Path) -> dict:
    """args.rps_seconds of requests for the manifest by tag at args.connections connections:
    GET with wrk, HEAD with ab (Debian's wrk 4.1.0 waits for a HEAD response's body, which
    never comes; hey does HEAD, but costs 2-3 times the client CPU per request of wrk or ab).
    Returns requests/s, requests, non-2xx and client-side errors; BenchError on any non-2xx."""
    if method == "GET":
        script = work / f"wrk-{'close' if close else 'keepalive'}.lua"
        connection = 'wrk.headers["Connection"] = "close"' if close else ""
        script.write_text(WRK_SCRIPT.format(accept=OCI_MANIFEST, close=connection))
        out = _run(
            ["wrk", f"-t{args.load_threads}", f"-c{args.connections}", f"-d{args.rps_seconds}s",
             "--timeout", "10s", "-s", str(script), manifest_url(reg)]
        )  # fmt: skip
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        result = {
            "rps": float(_match(r"^Requests/sec:\s+([\d.]+)", out)[1]),
            "requests": int(_match(r"^\s*(\d+) requests in", out)[1]),
            "non2xx": int(_match(r"^bench-non2xx (\d+)", out)[1]),
            "errors": sum(int(v) for v in sock.groups()) if sock else 0,
        }
    elif method == "HEAD":
        result = _ab_head(reg, close, args)
        out = result.pop("output")
    else:
        raise ValueError(method)
    if result["non2xx"]:
        raise BenchError(f"{reg.name} {method} manifest: {result['non2xx']} non-2xx responses:\n{out}")
    return result
