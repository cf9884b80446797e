"""Registry uploads and downloads driven by curl subprocesses (so the client is not the
bottleneck): monolithic and chunked blob uploads, blob download, content check, random blob."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from common import MIB, BenchError
from processes import Registry

REPO_NAME = "bench/blob"
CURL_MAX_TIME = 900  # seconds, per curl request


@dataclass
class CurlResult:
    status: int
    headers: dict[str, str]  # last response's headers, lower-case names
    info: dict
    body: bytes


def curl_base(reg: Registry) -> list[str]:
    """The options every curl request of the bench uses (also bench/load.py's parallel GETs)."""
    return [
        "curl", "-sS", "--max-time", str(CURL_MAX_TIME),
        "-H", "Expect:",  # real clients (Go) do not wait for 100-continue
        *(["--cacert", str(reg.ca)] if reg.ca else []),  # --via-nginx: the proxy's certificate
    ]  # fmt: skip


def curl(reg: Registry, args: list[str], work: Path, stdin=None, body_to_devnull: bool = False) -> CurlResult:
    hdr = work / "curl-headers.txt"
    body = work / "curl-body.bin"
    cmd = [
        *curl_base(reg),
        "-D", str(hdr),
        "-o", "/dev/null" if body_to_devnull else str(body),
        "-w", "%{json}",
        *args,
    ]  # fmt: skip
    proc = subprocess.run(
        cmd,
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"curl failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}: {args}")
    info = json.loads(proc.stdout)
    headers: dict[str, str] = {}
    for line in hdr.read_text(errors="replace").splitlines():
        if line.startswith("HTTP/"):
            headers = {}  # keep only the final response (skip 100 Continue etc.)
        elif ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    data = b"" if body_to_devnull else body.read_bytes()
    return CurlResult(int(info["http_code"]), headers, info, data)


def expect(res: CurlResult, status: int, what: str) -> None:
    if res.status != status:
        raise BenchError(f"{what}: expected HTTP {status}, got {res.status}: {res.body[:500]!r}")


def with_query(url: str, **params: str) -> str:
    sep = "&" if urllib.parse.urlsplit(url).query else "?"
    return url + sep + urllib.parse.urlencode(params)


def auth_args(reg: Registry) -> list[str]:
    return ["-u", reg.push_auth] if reg.push_auth else []


def start_upload(reg: Registry, work: Path) -> str:
    res = curl(reg, ["-X", "POST", *auth_args(reg), f"{reg.url}/v2/{REPO_NAME}/blobs/uploads/"], work)
    expect(res, 202, f"{reg.name} POST upload")
    location = res.headers.get("location")
    if not location:
        raise BenchError(f"{reg.name} POST upload: no Location header")
    return urllib.parse.urljoin(reg.url + "/", location)


def check_put(reg: Registry, res: CurlResult, digest: str) -> None:
    expect(res, 201, f"{reg.name} PUT upload")
    got = res.headers.get("docker-content-digest")
    if got != digest:
        raise BenchError(f"{reg.name} PUT upload: Docker-Content-Digest {got!r}, expected {digest}")


def upload_monolithic(reg: Registry, blob: Path, digest: str, work: Path) -> None:
    location = start_upload(reg, work)
    res = curl(
        reg,
        ["-T", str(blob), *auth_args(reg), "-H", "Content-Type: application/octet-stream",
         with_query(location, digest=digest)],
        work,
    )  # fmt: skip
    check_put(reg, res, digest)


def upload_chunked(reg: Registry, blob: Path, digest: str, work: Path) -> None:
    location = start_upload(reg, work)
    # -T - reads stdin: unknown length, so curl streams it with chunked transfer encoding
    with open(blob, "rb") as f:
        res = curl(
            reg,
            ["-X", "PATCH", "-T", "-", *auth_args(reg), "-H", "Transfer-Encoding: chunked",
             "-H", "Content-Type: application/octet-stream", location],
            work,
            stdin=f,
        )  # fmt: skip
    expect(res, 202, f"{reg.name} PATCH upload")
    location = urllib.parse.urljoin(location, res.headers.get("location") or location)
    res = curl(
        reg,
        ["-X", "PUT", *auth_args(reg), "-H", "Content-Length: 0",
         "-H", "Content-Type: application/octet-stream", with_query(location, digest=digest)],
        work,
    )  # fmt: skip
    check_put(reg, res, digest)


def blob_url(reg: Registry, digest: str) -> str:
    return f"{reg.url}/v2/{REPO_NAME}/blobs/{digest}"


def download(reg: Registry, blob_size: int, digest: str, work: Path) -> None:
    download_url(reg, blob_url(reg, digest), blob_size, work)


def download_url(reg: Registry, url: str, blob_size: int, work: Path) -> None:
    """GET url to /dev/null with the same curl options as every registry download (nginx too)."""
    res = curl(reg, [url], work, body_to_devnull=True)
    expect(res, 200, f"{reg.name} GET blob")
    if int(res.info["size_download"]) != blob_size:
        raise BenchError(f"{reg.name} GET blob: {res.info['size_download']} bytes, expected {blob_size}")


def verify_content(reg: Registry, blob_size: int, digest: str, work: Path) -> None:
    """Untimed: HEAD gives the right Content-Length, GET bytes hash to the digest."""
    url = blob_url(reg, digest)
    res = curl(reg, ["-I", url], work, body_to_devnull=True)
    expect(res, 200, f"{reg.name} HEAD blob")
    if res.headers.get("content-length") != str(blob_size):
        raise BenchError(f"{reg.name} HEAD blob: Content-Length {res.headers.get('content-length')!r}")
    h = hashlib.sha256()
    n = 0
    with subprocess.Popen([*curl_base(reg), "--fail", url], stdout=subprocess.PIPE) as p:
        while chunk := p.stdout.read(4 * MIB):
            h.update(chunk)
            n += len(chunk)
    if p.returncode != 0 or n != blob_size or "sha256:" + h.hexdigest() != digest:
        raise BenchError(f"{reg.name} served wrong content: {n} bytes, sha256:{h.hexdigest()}")


def make_blob(path: Path, size: int) -> str:
    """Write `size` random bytes to path; return their sha256 digest."""
    h = hashlib.sha256()
    left = size
    with open(path, "wb") as f:
        while left:
            chunk = os.urandom(min(left, 4 * MIB))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return "sha256:" + h.hexdigest()
