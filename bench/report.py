"""bench.py's results: the metric tables (Berth vs distribution; both vs nginx serving the blob
file; the --via-nginx proxies), their min/median/max summaries, the markdown printed to stdout
and the --json file. bench_s3.py's tables are in report_s3.py."""

from __future__ import annotations

import json
from pathlib import Path

from common import human_size, log
from measure import min_median_max

# Berth vs distribution: (key, label, unit, better, decimals); labels are formatted with
# size, parallel, parallel_size and connections.
DISTRIBUTION_METRICS = [
    ("upload_monolithic_mbps", "upload, POST + PUT with body (monolithic)", "MB/s", "higher", 0),
    ("upload_chunked_mbps", "upload, POST + chunked PATCH + PUT (docker)", "MB/s", "higher", 0),
    ("download_mbps", "download, GET blob to /dev/null", "MB/s", "higher", 0),
    ("parallel_download_mbps", "{parallel} parallel downloads of a {parallel_size} blob, total", "MB/s", "higher", 0),
    ("manifest_get_keepalive_rps", "manifest GET by tag, {connections} conns, keep-alive (wrk)", "req/s", "higher", 0),
    ("manifest_get_close_rps", "manifest GET by tag, {connections} conns, Connection: close (wrk)", "req/s", "higher", 0),
    ("manifest_head_keepalive_rps", "manifest HEAD by tag, {connections} conns, keep-alive (ab)", "req/s", "higher", 0),
    ("manifest_head_close_rps", "manifest HEAD by tag, {connections} conns, Connection: close (ab)", "req/s", "higher", 0),
    ("upload_monolithic_peak_mib", "peak RSS during monolithic upload", "MiB", "lower", 1),
    ("upload_chunked_peak_mib", "peak RSS during chunked upload", "MiB", "lower", 1),
    ("download_peak_mib", "peak RSS during download", "MiB", "lower", 1),
    ("parallel_download_peak_mib", "peak RSS during {parallel} parallel downloads", "MiB", "lower", 1),
    ("manifest_get_keepalive_peak_mib", "peak RSS during manifest GETs, keep-alive", "MiB", "lower", 1),
    ("manifest_get_close_peak_mib", "peak RSS during manifest GETs, Connection: close", "MiB", "lower", 1),
    ("upload_monolithic_cpu_s", "registry CPU time, monolithic upload", "s", "lower", 2),
    ("upload_chunked_cpu_s", "registry CPU time, chunked upload", "s", "lower", 2),
    ("download_cpu_s", "registry CPU time, download", "s", "lower", 2),
    ("parallel_download_cpu_s", "registry CPU time, {parallel} parallel downloads", "s", "lower", 2),
    ("manifest_get_keepalive_cpu_ms", "registry CPU per manifest GET, keep-alive", "ms", "lower", 3),
    ("manifest_get_close_cpu_ms", "registry CPU per manifest GET, Connection: close", "ms", "lower", 3),
    ("manifest_head_keepalive_cpu_ms", "registry CPU per manifest HEAD, keep-alive", "ms", "lower", 3),
    ("manifest_head_close_cpu_ms", "registry CPU per manifest HEAD, Connection: close", "ms", "lower", 3),
    ("idle_rss_mib", "RSS after start (idle)", "MiB", "lower", 1),
    ("idle_pss_mib", "PSS after start (idle; shared pages split)", "MiB", "lower", 1),
]  # fmt: skip

# The registries vs nginx serving the same file (from the same curl): metrics nginx has too.
NGINX_METRICS = ["download", "parallel_download"]
# --via-nginx: the proxies' own figures, step by step (prefix of the sample keys, label).
PROXY_STEPS = [
    ("upload_monolithic", "monolithic upload"),
    ("upload_chunked", "chunked upload"),
    ("download", "download"),
    ("parallel_download", "{parallel} parallel downloads"),
    ("manifest_get_keepalive", "manifest GETs, keep-alive"),
    ("manifest_get_close", "manifest GETs, Connection: close"),
    ("manifest_head_keepalive", "manifest HEADs, keep-alive"),
    ("manifest_head_close", "manifest HEADs, Connection: close"),
]


def write_json(path: str, result: dict) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {path}")


def _names(args) -> dict:
    return {
        "size": human_size(args.size),
        "parallel": args.parallel,
        "parallel_size": human_size(args.parallel_size),
        "connections": args.connections,
    }


def _row(samples: dict, key: str, label: str, unit: str, better: str, dec: int, names: dict) -> dict:
    row = {"metric": key, "label": label.format(**names), "unit": unit, "better": better, "decimals": dec}
    for name in ("berth", "distribution", "nginx"):
        stats = min_median_max(samples.get(name, {}).get(key))
        if stats:
            row[name] = stats
    for num, den in (("berth", "distribution"), ("berth", "nginx"), ("distribution", "nginx")):
        a, b = row.get(num), row.get(den)
        row[f"{num}/{den}"] = a["median"] / b["median"] if a and b and b["median"] else None
    return row


def summarize_vs_distribution(samples: dict[str, dict[str, list[float]]], args) -> dict[str, list[dict]]:
    """samples: server ("berth", "distribution", "nginx" = the file server) -> key -> values.
    Returns the rows of the three tables: main, vs_nginx, proxy."""
    names = _names(args)
    regs = {n: s for n, s in samples.items() if n != "nginx"}
    main = [_row(regs, *metric, names) for metric in DISTRIBUTION_METRICS]
    vs_nginx = []
    if "nginx" in samples:
        decimals = {"mbps": 0, "peak_mib": 1, "cpu_s": 2}
        labels = {k: (label, unit, better) for k, label, unit, better, _ in DISTRIBUTION_METRICS}
        for step in NGINX_METRICS:
            for suffix, dec in decimals.items():
                key = f"{step}_{suffix}"
                label, unit, better = labels[key]
                label = label.replace("registry CPU time", "server CPU time")
                vs_nginx.append(_row(samples, key, label, unit, better, dec, names))
    proxy = []
    for step, what in PROXY_STEPS:
        for suffix, label, unit, dec in (("proxy_peak_mib", "nginx peak RSS", "MiB", 1),
                                         ("proxy_cpu_s", "nginx CPU time", "s", 2)):  # fmt: skip
            proxy.append(_row(regs, f"{step}_{suffix}", f"{label}, {what}", unit, "lower", dec, names))
    keep = lambda rows: [r for r in rows if any(n in r for n in ("berth", "distribution"))]  # noqa: E731
    return {"main": keep(main), "vs_nginx": keep(vs_nginx), "proxy": keep(proxy)}


def _fmt(v, dec) -> str:
    return f"{v:.{dec}f}" if v is not None else "-"


def _rng(s, dec) -> str:
    return f"{_fmt(s['min'], dec)}-{_fmt(s['max'], dec)}" if s else "-"


def _med(r: dict, name: str) -> str:
    return _fmt(r[name]["median"] if name in r else None, r["decimals"])


def _ratio(r: dict, key: str) -> str:
    return f"{r[key]:.2f}" if r[key] is not None else "-"


def markdown_vs_distribution(tables: dict[str, list[dict]], machine: dict, args) -> str:
    path = "through nginx (deploy/nginx.conf, TLS) in front of each" if args.via_nginx else "direct"
    header = (
        f"Blob {args.size} bytes ({args.size / 2**30:g} GiB), {args.repeat} repeat(s), registries {path}; "
        f"nproc {machine['nproc']}, {machine['cpu']}, Python {machine['python']}, "
        f"{machine['distribution']}, {machine['curl'].split(' (')[0]}, {machine.get('nginx') or 'nginx ?'}"
    )
    if machine["cpu_busy_at_start"] >= 0.15:
        header += (
            f"\n\n**Warning:** the CPUs were {machine['cpu_busy_at_start']:.0%} busy just before the "
            "bench started: something else was running, figures may be low and noisy."
        )
    out = [
        header,
        "",
        "| metric | unit | better | Berth median | distribution median | ratio Berth/dist "
        "| Berth min-max | distribution min-max |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in tables["main"]:
        out.append(
            f"| {r['label']} | {r['unit']} | {r['better']} | {_med(r, 'berth')} | {_med(r, 'distribution')} "
            f"| {_ratio(r, 'berth/distribution')} | {_rng(r.get('berth'), r['decimals'])} "
            f"| {_rng(r.get('distribution'), r['decimals'])} |"
        )
    out += [
        "",
        "MB/s = 10^6 bytes/s over the whole request sequence; peak RSS = sum of VmHWM over the",
        "registry's process tree (gunicorn master + workers), reset before each step; CPU per request",
        "= the registry's CPU time during the load run / requests answered.",
    ]
    if tables["vs_nginx"]:
        tls = ", over TLS like the proxies" if args.via_nginx else ""
        out += [
            "",
            f"Reference: nginx serving the same blob files (sendfile off, output_buffers 2 256k, worker_processes auto{tls}), same curl:",
            "",
            "| metric | unit | Berth | distribution | nginx | Berth/nginx | distribution/nginx | nginx min-max |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in tables["vs_nginx"]:
            out.append(
                f"| {r['label']} | {r['unit']} | {_med(r, 'berth')} | {_med(r, 'distribution')} "
                f"| {_med(r, 'nginx')} | {_ratio(r, 'berth/nginx')} | {_ratio(r, 'distribution/nginx')} "
                f"| {_rng(r.get('nginx'), r['decimals'])} |"
            )
    if tables["proxy"]:
        out += [
            "",
            "The nginx proxies themselves (master + workers), one in front of each registry:",
            "",
            "| metric | unit | nginx → Berth | nginx → distribution | ratio | Berth-side min-max |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in tables["proxy"]:
            out.append(
                f"| {r['label']} | {r['unit']} | {_med(r, 'berth')} | {_med(r, 'distribution')} "
                f"| {_ratio(r, 'berth/distribution')} | {_rng(r.get('berth'), r['decimals'])} |"
            )
    return "\n".join(out)
