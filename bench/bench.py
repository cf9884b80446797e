#!/usr/bin/env python3
"""Side-by-side blob upload/download benchmark: Berth vs CNCF distribution 2.8.

Both registries run on 127.0.0.1 with filesystem storage in a temp dir. The data path is
driven by curl subprocesses (so the client is not the bottleneck); this script only times
them and samples /proc for the registries' peak memory (VmHWM) and CPU time.

Standard library only (plus curl). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
REPO_NAME = "bench/blob"
CURL_MAX_TIME = 900  # seconds, per curl request

# (key, label, unit, better, decimals)
METRICS = [
    (
        "upload_monolithic_mbps",
        "upload, POST + PUT with body (monolithic)",
        "MB/s",
        "higher",
        0,
    ),
    (
        "upload_chunked_mbps",
        "upload, POST + chunked PATCH + PUT (docker)",
        "MB/s",
        "higher",
        0,
    ),
    ("download_mbps", "download, GET blob to /dev/null", "MB/s", "higher", 0),
    (
        "upload_monolithic_peak_mib",
        "peak RSS during monolithic upload",
        "MiB",
        "lower",
        1,
    ),
    ("upload_chunked_peak_mib", "peak RSS during chunked upload", "MiB", "lower", 1),
    ("download_peak_mib", "peak RSS during download", "MiB", "lower", 1),
    (
        "upload_monolithic_cpu_s",
        "registry CPU time, monolithic upload",
        "s",
        "lower",
        2,
    ),
    ("upload_chunked_cpu_s", "registry CPU time, chunked upload", "s", "lower", 2),
    ("download_cpu_s", "registry CPU time, download", "s", "lower", 2),
    ("idle_rss_mib", "RSS after start (idle)", "MiB", "lower", 1),
    ("idle_pss_mib", "PSS after start (idle; shared pages split)", "MiB", "lower", 1),
]


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- /proc sampling


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


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_ticks(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()  # fields from 3 (state) on
    return int(fields[11]) + int(fields[12])  # utime + stime


class ProcSampler:
    """Peak memory and CPU time of a registry's process tree over one step."""

    def __init__(self, root: int | None):
        self.root = root
        self._cpu_before: dict[int, int] = {}

    def start(self) -> None:
        if self.root is None:
            return
        pids = process_tree(self.root)
        for pid in pids:
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to VmRSS
            except OSError as exc:
                log(f"warning: cannot reset VmHWM of pid {pid}: {exc}")
        self._cpu_before = {pid: _cpu_ticks(pid) for pid in pids}

    def stop(self) -> tuple[float | None, float | None]:
        """(sum of VmHWM in MiB, CPU seconds used since start)."""
        if self.root is None:
            return None, None
        pids = process_tree(self.root)
        hwm = sum(_status_kib(pid, "VmHWM") for pid in pids) / 1024
        ticks = sum(_cpu_ticks(pid) - self._cpu_before.get(pid, 0) for pid in pids)
        return hwm, ticks / CLK_TCK

    def rss_mib(self) -> float | None:
        if self.root is None:
            return None
        return sum(_status_kib(pid, "VmRSS") for pid in process_tree(self.root)) / 1024

    def pss_mib(self) -> float | None:
        """Proportional set size: pages shared by forked workers are counted once overall."""
        if self.root is None:
            return None
        total = 0
        for pid in process_tree(self.root):
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        return total / 1024


# --------------------------------------------------------------------------- registries


@dataclass
class Registry:
    name: str
    url: str  # http://127.0.0.1:PORT
    push_auth: str | None = None  # "user:password" for curl -u on push requests
    proc: subprocess.Popen | None = None
    pid: int | None = None  # root of the process tree to sample
    log_path: Path | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, value: float | None) -> None:
        if value is not None:
            self.samples.setdefault(key, []).append(value)

    def log_tail(self, n: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:]) or "(empty log)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_distribution(work: Path, binary: str) -> Registry:
    if shutil.which(binary) is None:
        raise BenchError(f"{binary} not found: apt-get install -y docker-registry")
    port = free_port()
    data = work / "distribution-data"
    data.mkdir()
    config = work / "distribution.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {data}\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log_path = work / "distribution.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [binary, "serve", str(config)],
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


def wait_ready(reg: Registry, timeout: float = 30.0) -> None:
    """Wait until GET /v2/ gets any HTTP answer below 500 (401 counts: it is up)."""
    parsed = urllib.parse.urlsplit(reg.url)
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if reg.proc is not None and reg.proc.poll() is not None:
            raise BenchError(
                f"{reg.name} exited with status {reg.proc.returncode} during start:\n{reg.log_tail()}"
            )
        try:
            conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=2)
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


# --------------------------------------------------------------------------- curl


@dataclass
class CurlResult:
    status: int
    headers: dict[str, str]  # last response's headers, lower-case names
    info: dict
    body: bytes


def curl(args: list[str], work: Path, stdin=None, body_to_devnull: bool = False) -> CurlResult:
    hdr = work / "curl-headers.txt"
    body = work / "curl-body.bin"
    cmd = [
        "curl", "-sS", "--max-time", str(CURL_MAX_TIME),
        "-H", "Expect:",  # real clients (Go) do not wait for 100-continue
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
    res = curl(
        ["-X", "POST", *auth_args(reg), f"{reg.url}/v2/{REPO_NAME}/blobs/uploads/"],
        work,
    )
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
            ["-X", "PATCH", "-T", "-", *auth_args(reg), "-H", "Transfer-Encoding: chunked",
             "-H", "Content-Type: application/octet-stream", location],
            work,
            stdin=f,
        )  # fmt: skip
    expect(res, 202, f"{reg.name} PATCH upload")
    location = urllib.parse.urljoin(location, res.headers.get("location") or location)
    res = curl(
        ["-X", "PUT", *auth_args(reg), "-H", "Content-Length: 0",
         "-H", "Content-Type: application/octet-stream", with_query(location, digest=digest)],
        work,
    )  # fmt: skip
    check_put(reg, res, digest)


def download(reg: Registry, blob_size: int, digest: str, work: Path) -> None:
    res = curl([f"{reg.url}/v2/{REPO_NAME}/blobs/{digest}"], work, body_to_devnull=True)
    expect(res, 200, f"{reg.name} GET blob")
    if int(res.info["size_download"]) != blob_size:
        raise BenchError(f"{reg.name} GET blob: {res.info['size_download']} bytes, expected {blob_size}")


def verify_content(reg: Registry, blob_size: int, digest: str, work: Path) -> None:
    """Untimed: HEAD gives the right Content-Length, GET bytes hash to the digest."""
    url = f"{reg.url}/v2/{REPO_NAME}/blobs/{digest}"
    res = curl(["-I", url], work, body_to_devnull=True)
    expect(res, 200, f"{reg.name} HEAD blob")
    if res.headers.get("content-length") != str(blob_size):
        raise BenchError(f"{reg.name} HEAD blob: Content-Length {res.headers.get('content-length')!r}")
    h = hashlib.sha256()
    n = 0
    with subprocess.Popen(["curl", "-sS", "--fail", url], stdout=subprocess.PIPE) as p:
        while chunk := p.stdout.read(4 * MIB):
            h.update(chunk)
            n += len(chunk)
    if p.returncode != 0 or n != blob_size or "sha256:" + h.hexdigest() != digest:
        raise BenchError(f"{reg.name} served wrong content: {n} bytes, sha256:{h.hexdigest()}")


# --------------------------------------------------------------------------- steps


def run_step(reg: Registry, step: str, fn, nbytes: int) -> None:
    os.sync()  # flush the previous step's dirty pages so writeback does not land in this one
    sampler = ProcSampler(reg.pid)
    sampler.start()
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    peak, cpu = sampler.stop()
    mbps = nbytes / elapsed / 1e6
    reg.add(f"{step}_mbps", mbps)
    reg.add(f"{step}_peak_mib", peak)
    reg.add(f"{step}_cpu_s", cpu)
    extra = f", peak {peak:.1f} MiB, cpu {cpu:.2f} s" if peak is not None else ""
    log(f"{reg.name:12} {step:18} {elapsed:7.2f} s  {mbps:7.0f} MB/s{extra}")


def make_blob(path: Path, size: int) -> str:
    h = hashlib.sha256()
    left = size
    with open(path, "wb") as f:
        while left:
            chunk = os.urandom(min(left, 4 * MIB))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------- report


def machine_info(dist_binary: str, loadavg_at_start: str, busy_at_start: float) -> dict:
    def cmd_out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""

    cpu_model = ""
    try:
        m = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu_model = m.group(1) if m else ""
    except OSError:
        pass
    return {
        "loadavg_at_start": loadavg_at_start,
        "cpu_busy_at_start": round(busy_at_start, 3),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu_model,
        "mem_total_mib": _meminfo_mib("MemTotal"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "curl": cmd_out(["curl", "--version"]).split("\n")[0],
        "distribution": cmd_out([dist_binary, "--version"]),
        "berth_commit": cmd_out(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"]),
    }


def _meminfo_mib(key: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def summarize(regs: dict[str, Registry]) -> list[dict]:
    rows = []
    for key, label, unit, better, _ in METRICS:
        row = {"metric": key, "label": label, "unit": unit, "better": better}
        for name in ("berth", "distribution"):
            vals = regs[name].samples.get(key) if name in regs else None
            if vals:
                row[name] = {
                    "min": min(vals),
                    "median": statistics.median(vals),
                    "max": max(vals),
                    "n": len(vals),
                }
        b, d = row.get("berth"), row.get("distribution")
        row["ratio"] = b["median"] / d["median"] if b and d and d["median"] else None
        if b or d:
            rows.append(row)
    return rows


def markdown_table(rows: list[dict], machine: dict, args) -> str:
    decimals = {k: dec for k, *_, dec in METRICS}

    def fmt(v, key):
        return f"{v:.{decimals[key]}f}" if v is not None else "-"

    def rng(s, key):
        return f"{fmt(s['min'], key)}-{fmt(s['max'], key)}" if s else "-"

    header = (
        f"Blob {args.size} bytes ({args.size / 2**30:g} GiB), {args.repeat} repeat(s); "
        f"nproc {machine['nproc']}, {machine['cpu']}, Python {machine['python']}, "
        f"{machine['distribution']}, {machine['curl'].split(' (')[0]}"
    )
    columns = (
        "| metric | unit | better | Berth median | distribution median | ratio Berth/dist "
        "| Berth min-max | distribution min-max |"
    )
    if machine["cpu_busy_at_start"] >= 0.15:
        header += (
            f"\n\n**Warning:** the CPUs were {machine['cpu_busy_at_start']:.0%} busy just before the "
            "bench started: something else was running, figures may be low and noisy."
        )
    out = [header, "", columns, "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        k = r["metric"]
        b, d = r.get("berth"), r.get("distribution")
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        out.append(
            f"| {r['label']} | {r['unit']} | {r['better']} | {fmt(b and b['median'], k)} "
            f"| {fmt(d and d['median'], k)} | {ratio} | {rng(b, k)} | {rng(d, k)} |"
        )
    out.append("")
    out.append("MB/s = 10^6 bytes/s over the whole request sequence; peak RSS = sum of VmHWM over the")
    out.append("registry's process tree (gunicorn master + workers), reset before each step.")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 64M, 1G, 1GiB, 1048576)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    size = int(float(m.group(1)) * mult)
    if size <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return size


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--size",
        type=parse_size,
        default=1 << 30,
        help="blob size, binary units (default 1G = 1 GiB)",
    )
    p.add_argument("--repeat", type=int, default=3, help="repetitions of every step (default 3)")
    p.add_argument("--only", choices=["berth", "distribution"], help="benchmark one registry alone")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="also write results as JSON")
    p.add_argument(
        "--tmpdir",
        help="parent dir for the blob and registry data (default: system temp)",
    )
    p.add_argument(
        "--berth-url",
        help="use an already running Berth at this URL instead of starting one",
    )
    p.add_argument("--berth-pid", type=int, help="with --berth-url: root pid to sample memory/CPU")
    p.add_argument("--berth-auth", default=os.environ.get("BENCH_BERTH_AUTH"),
                   help="with --berth-url: user:password for pushes (env BENCH_BERTH_AUTH)")  # fmt: skip
    p.add_argument(
        "--berth-workers",
        type=int,
        help="pass -w N to gunicorn (default: gunicorn.conf.py)",
    )
    p.add_argument("--distribution-url", help="use an already running distribution at this URL")
    p.add_argument("--distribution-pid", type=int, help="with --distribution-url: pid to sample")
    p.add_argument(
        "--distribution-bin",
        default="/usr/bin/docker-registry",
        help="distribution binary",
    )
    p.add_argument(
        "--repo-root",
        type=Path,
        default=REPO_ROOT,
        help="Berth repo root (default: from __file__)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the untimed content check")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def _cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over `seconds` (from /proc/stat): is something else running?"""

    def sample() -> tuple[int, int]:
        vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1 - (i1 - i0) / max(t1 - t0, 1)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def _raise_exit(signum, _frame):
    print(f"bench: {signal.Signals(signum).name}, cleaning up", file=sys.stderr)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    loadavg_at_start = _loadavg()
    busy_at_start = _cpu_busy()
    if shutil.which("curl") is None:
        print("curl is required", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGHUP, _raise_exit)

    names = [args.only] if args.only else ["berth", "distribution"]
    work = Path(tempfile.mkdtemp(prefix="berth-bench-", dir=args.tmpdir))
    regs: dict[str, Registry] = {}
    try:
        free = shutil.disk_usage(work).free
        need = args.size * (1 + len(names)) * 2
        if free < need:
            raise BenchError(f"{work}: {free / 2**30:.1f} GiB free, need about {need / 2**30:.1f} GiB")

        for name in names:
            if name == "berth":
                if args.berth_url:
                    regs[name] = Registry(
                        name,
                        args.berth_url.rstrip("/"),
                        args.berth_auth,
                        pid=args.berth_pid,
                    )
                else:
                    regs[name] = start_berth(work, args.repo_root, VENV_BIN, args.berth_workers)
            elif args.distribution_url:
                url = args.distribution_url.rstrip("/")
                regs[name] = Registry(name, url, None, pid=args.distribution_pid)
            else:
                regs[name] = start_distribution(work, args.distribution_bin)
        for reg in regs.values():
            wait_ready(reg)
            reg.add("idle_rss_mib", ProcSampler(reg.pid).rss_mib())
            reg.add("idle_pss_mib", ProcSampler(reg.pid).pss_mib())
            log(f"{reg.name} ready at {reg.url} (pid {reg.pid})")

        blob = work / "blob.bin"
        log(f"generating {args.size} random bytes in {blob}")
        digest = make_blob(blob, args.size)
        log(f"blob digest {digest}")

        steps = [
            ("upload_monolithic", lambda r: upload_monolithic(r, blob, digest, work)),
            ("upload_chunked", lambda r: upload_chunked(r, blob, digest, work)),
            ("download", lambda r: download(r, args.size, digest, work)),
        ]
        order = list(regs.values())
        for rep in range(args.repeat):
            log(f"repeat {rep + 1}/{args.repeat}")
            for step, fn in steps:
                # alternate which registry goes first, so drift does not favour one side
                for reg in order if rep % 2 == 0 else order[::-1]:
                    run_step(reg, step, lambda fn=fn, reg=reg: fn(reg), args.size)
        if not args.no_verify:
            for reg in regs.values():
                verify_content(reg, args.size, digest, work)
                log(f"{reg.name}: served content matches {digest}")

        machine = machine_info(args.distribution_bin, loadavg_at_start, busy_at_start)
        rows = summarize(regs)
        print(markdown_table(rows, machine, args))
        if args.json_out:
            result = {
                "machine": machine,
                "config": {
                    "size": args.size,
                    "repeat": args.repeat,
                    "registries": names,
                    "digest": digest,
                },
                "registries": {n: {"url": r.url, "samples": r.samples} for n, r in regs.items()},
                "summary": rows,
            }
            Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
            log(f"wrote {args.json_out}")
        return 0
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        for reg in regs.values():
            if reg.proc is not None:
                print(f"--- {reg.name} log tail ---\n{reg.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        # do not let a second Ctrl-C or SIGTERM skip the cleanup
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
        for reg in regs.values():
            stop_registry(reg)
        shutil.rmtree(work, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
