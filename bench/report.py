"""The results: the metric tables of both benchmarks, their min/median/max summaries, the
markdown tables printed to stdout and the --json file."""

from __future__ import annotations

import json
from pathlib import Path

from common import human_size, log
from measure import min_median_max

# bench.py, Berth vs distribution: (key, label, unit, better, decimals)
DISTRIBUTION_METRICS = [
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


def write_json(path: str, result: dict) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {path}")


# --------------------------------------------------------------------------- bench.py


def summarize_vs_distribution(samples: dict[str, dict[str, list[float]]]) -> list[dict]:
    """samples: registry name ("berth", "distribution") -> sample key -> values."""
    rows = []
    for key, label, unit, better, _ in DISTRIBUTION_METRICS:
        row = {"metric": key, "label": label, "unit": unit, "better": better}
        for name in ("berth", "distribution"):
            stats = min_median_max(samples[name].get(key) if name in samples else None)
            if stats:
                row[name] = stats
        b, d = row.get("berth"), row.get("distribution")
        row["ratio"] = b["median"] / d["median"] if b and d and d["median"] else None
        if b or d:
            rows.append(row)
    return rows


def markdown_vs_distribution(rows: list[dict], machine: dict, args) -> str:
    decimals = {k: dec for k, *_, dec in DISTRIBUTION_METRICS}

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


# --------------------------------------------------------------------------- bench_s3.py


def summarize_vs_boto3(samples: dict[str, list[float]], args) -> list[dict]:
    names = {
        "size": human_size(args.size),
        "mem_size": human_size(args.mem_size),
        "threads": args.boto3_threads,
    }
    rows = []
    for label, unit, bkey, dkey, dec in BOTO3_ROWS:
        b = min_median_max(samples.get(bkey) if bkey else None)
        d = min_median_max(samples.get(dkey) if dkey else None)
        if b or d:
            ratio = b["median"] / d["median"] if b and d and d["median"] else None
            rows.append(
                {"label": label.format(**names), "unit": unit, "decimals": dec, "berth_key": bkey}
                | {"boto3_key": dkey, "berth": b, "boto3": d, "ratio": ratio}
            )
    return rows


def markdown_vs_boto3(rows: list[dict], machine: dict, args) -> str:
    def fmt(v, dec):
        return f"{v:.{dec}f}" if v is not None else "-"

    def rng(s, dec):
        return f"{fmt(s['min'], dec)}-{fmt(s['max'], dec)} (n={s['n']})" if s else "-"

    out = [
        f"Blob {human_size(args.size)} ({args.repeat} repeat(s)), memory push {human_size(args.mem_size)} "
        f"({args.mem_repeat} repeat(s)), part size {human_size(args.part_size)}; S3 = {machine['moto']} "
        f"on 127.0.0.1; nproc {machine['nproc']}, {machine['cpu']}, Python {machine['python']}, "
        f"boto3 {machine['boto3']}, {machine['curl'].split(' (')[0]}, Berth {machine['berth_commit']}",
        "",
        "| metric | unit | Berth median | boto3 direct median | ratio Berth/boto3 | Berth min-max | boto3 min-max |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    if machine["cpu_busy_at_start"] >= 0.15:
        out.insert(1, f"\n**Warning:** CPUs {machine['cpu_busy_at_start']:.0%} busy before the start.")
    for r in rows:
        dec, b, d = r["decimals"], r["berth"], r["boto3"]
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        out.append(
            f"| {r['label']} | {r['unit']} | {fmt(b and b['median'], dec)} | {fmt(d and d['median'], dec)} "
            f"| {ratio} | {rng(b, dec)} | {rng(d, dec)} |"
        )
    out += [
        "",
        "boto3 direct = one multipart upload with parts of the same size sent one at a time (as Berth's",
        "writer does) and one streamed GetObject (as Berth's GET). MB/s = 10^6 bytes/s over the whole",
        "request sequence. Peak RSS = sum of VmHWM over gunicorn master + workers, reset before each step.",
    ]
    return "\n".join(out)
