"""bench_s3.py's results: Berth on S3 vs boto3 straight to the same endpoint, and Berth vs CNCF
distribution on the same S3 endpoint; min/median/max summaries and the markdown tables."""

from __future__ import annotations

from common import human_size
from measure import min_median_max

# bench_s3.py, Berth on S3 vs boto3: (label, unit, Berth sample key, boto3 sample key, decimals)
BOTO3_ROWS = [
    ("push, POST + chunked PATCH + PUT (docker)", "MB/s", "berth_chunked_mbps", "boto3_seq_up_mbps", 0),
    ("push, POST + PUT with body (monolithic)", "MB/s", "berth_monolithic_mbps", "boto3_seq_up_mbps", 0),
    ("pull, GET blob to /dev/null", "MB/s", "berth_download_mbps", "boto3_seq_down_mbps", 0),
    ("reference: upload_fileobj, {threads} threads", "MB/s", None, "boto3_xfer_up_mbps", 0),
    ("reference: download_fileobj, {threads} threads", "MB/s", None, "boto3_xfer_down_mbps", 0),
    ("Berth peak RSS, chunked push of {size}", "MiB", "berth_chunked_peak_mib", None, 1),
    ("Berth peak RSS, monolithic push of {size}", "MiB", "berth_monolithic_peak_mib", None, 1),
    ("Berth peak RSS, chunked push of {mem_size}", "MiB", "big_chunked_peak_mib", None, 1),
    ("Berth peak RSS, monolithic push of {mem_size}", "MiB", "big_monolithic_peak_mib", None, 1),
    ("Berth peak RSS, pull of {size}", "MiB", "berth_download_peak_mib", None, 1),
    ("Berth RSS after start (idle)", "MiB", "idle_rss_mib", None, 1),
    ("push throughput, chunked, {mem_size}", "MB/s", "big_chunked_mbps", None, 0),
    ("push throughput, monolithic, {mem_size}", "MB/s", "big_monolithic_mbps", None, 0),
    ("Berth CPU, chunked push", "s", "berth_chunked_cpu_s", None, 1),
    ("Berth CPU, monolithic push", "s", "berth_monolithic_cpu_s", None, 1),
    ("Berth CPU, pull", "s", "berth_download_cpu_s", None, 1),
    ("moto CPU, Berth chunked push / boto3 upload", "s", "berth_chunked_moto_cpu_s", "boto3_seq_up_moto_cpu_s", 1),
    ("moto CPU, Berth monolithic push / boto3 upload", "s", "berth_monolithic_moto_cpu_s", "boto3_seq_up_moto_cpu_s", 1),
    ("moto CPU, Berth pull / boto3 download", "s", "berth_download_moto_cpu_s", "boto3_seq_down_moto_cpu_s", 1),
]  # fmt: skip


# Berth vs distribution, both on the same moto: (label, unit, Berth key, distribution key, decimals)
DISTRIBUTION_ROWS = [
    ("push, POST + chunked PATCH + PUT (docker)", "MB/s", "berth_chunked_mbps", "dist_chunked_mbps", 0),
    ("push, POST + PUT with body (monolithic)", "MB/s", "berth_monolithic_mbps", "dist_monolithic_mbps", 0),
    ("pull, GET blob to /dev/null", "MB/s", "berth_download_mbps", "dist_download_mbps", 0),
    ("peak RSS, chunked push of {size}", "MiB", "berth_chunked_peak_mib", "dist_chunked_peak_mib", 1),
    ("peak RSS, monolithic push of {size}", "MiB", "berth_monolithic_peak_mib", "dist_monolithic_peak_mib", 1),
    ("peak RSS, pull of {size}", "MiB", "berth_download_peak_mib", "dist_download_peak_mib", 1),
    ("RSS after start (idle)", "MiB", "idle_rss_mib", "dist_idle_rss_mib", 1),
    ("registry CPU, chunked push", "s", "berth_chunked_cpu_s", "dist_chunked_cpu_s", 1),
    ("registry CPU, monolithic push", "s", "berth_monolithic_cpu_s", "dist_monolithic_cpu_s", 1),
    ("registry CPU, pull", "s", "berth_download_cpu_s", "dist_download_cpu_s", 1),
    ("moto CPU, chunked push", "s", "berth_chunked_moto_cpu_s", "dist_chunked_moto_cpu_s", 1),
    ("moto CPU, monolithic push", "s", "berth_monolithic_moto_cpu_s", "dist_monolithic_moto_cpu_s", 1),
    ("moto CPU, pull", "s", "berth_download_moto_cpu_s", "dist_download_moto_cpu_s", 1),
]  # fmt: skip


def _summarize(spec: list[tuple], other: str, samples: dict[str, list[float]], args) -> list[dict]:
    names = {
        "size": human_size(args.size),
        "mem_size": human_size(args.mem_size),
        "threads": args.boto3_threads,
    }
    rows = []
    for label, unit, bkey, okey, dec in spec:
        b = min_median_max(samples.get(bkey) if bkey else None)
        o = min_median_max(samples.get(okey) if okey else None)
        if b or o:
            ratio = b["median"] / o["median"] if b and o and o["median"] else None
            rows.append(
                {"label": label.format(**names), "unit": unit, "decimals": dec, "berth_key": bkey}
                | {f"{other}_key": okey, "berth": b, other: o, "ratio": ratio}
            )
    return rows


def summarize_vs_boto3(samples: dict[str, list[float]], args) -> list[dict]:
    return _summarize(BOTO3_ROWS, "boto3", samples, args)


def summarize_vs_distribution(samples: dict[str, list[float]], args) -> list[dict]:
    """Empty when distribution was not run (no dist_* samples)."""
    rows = _summarize(DISTRIBUTION_ROWS, "distribution", samples, args)
    return rows if any(r["distribution"] for r in rows) else []


def _table(rows: list[dict], other: str) -> list[str]:
    def fmt(v, dec):
        return f"{v:.{dec}f}" if v is not None else "-"

    def rng(s, dec):
        return f"{fmt(s['min'], dec)}-{fmt(s['max'], dec)} (n={s['n']})" if s else "-"

    title = {"boto3": "boto3 direct", "distribution": "distribution"}[other]
    out = [
        f"| metric | unit | Berth median | {title} median | ratio Berth/{other} | Berth min-max "
        f"| {other} min-max |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        dec, b, d = r["decimals"], r["berth"], r[other]
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        out.append(
            f"| {r['label']} | {r['unit']} | {fmt(b and b['median'], dec)} | {fmt(d and d['median'], dec)} "
            f"| {ratio} | {rng(b, dec)} | {rng(d, dec)} |"
        )
    return out


def markdown_s3(boto3_rows: list[dict], dist_rows: list[dict], machine: dict, args) -> str:
    out = [
        f"Blob {human_size(args.size)} ({args.repeat} repeat(s)), memory push {human_size(args.mem_size)} "
        f"({args.mem_repeat} repeat(s)), part size {human_size(args.part_size)}; S3 = {machine['moto']} "
        f"on 127.0.0.1; nproc {machine['nproc']}, {machine['cpu']}, Python {machine['python']}, "
        f"boto3 {machine['boto3']}, {machine['curl'].split(' (')[0]}, Berth {machine['berth_commit']}",
        "",
        *_table(boto3_rows, "boto3"),
    ]
    if machine["cpu_busy_at_start"] >= 0.15:
        out.insert(1, f"\n**Warning:** CPUs {machine['cpu_busy_at_start']:.0%} busy before the start.")
    out += [
        "",
        "boto3 direct = one multipart upload with parts of the same size sent one at a time (as Berth's",
        "writer does) and one streamed GetObject (as Berth's GET). MB/s = 10^6 bytes/s over the whole",
        "request sequence. Peak RSS = sum of VmHWM over gunicorn master + workers, reset before each step.",
    ]
    if dist_rows:
        out += [
            "",
            f"Berth vs {machine.get('distribution', 'distribution')} with its s3 driver, on the same moto "
            "(chunksize and multipart copy chunk = part size, redirect disabled):",
            "",
            *_table(dist_rows, "distribution"),
        ]
    return "\n".join(out)
