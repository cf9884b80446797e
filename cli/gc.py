"""Garbage collection, as the server's collection runs it (storage/gc.py): blob data, links and
(with --mode untagged) manifests nothing needs, and idle upload sessions. Safe while the registry
serves pushes; --dry-run only reports what would go. Exits 0 when the collection ran, 1 when it
failed (nothing half-done is visible: what it had decided is deleted or kept whole)."""

from __future__ import annotations

import argparse
import json
import sys

from cli.progress import GcProgress
from storage.digests import validate_name
from storage.gc import MODES, CollectionRunning, GarbageCollector, GcReport
from storage.usage import human_size

NAME = "gc"
HELP = "collect garbage: unreferenced (or untagged) blobs, links, manifests and idle uploads"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode", choices=MODES, default="unreferenced", help="what to collect (default: unreferenced)"
    )
    parser.add_argument("--repository", metavar="NAME", help="only this repository (and data only it linked)")
    parser.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    parser.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS", help="wait this long for a running collection"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace, context) -> int:
    repository = validate_name(args.repository) if args.repository is not None else None
    gc = context.settings.gc
    with GcProgress("gc") as progress:
        collector = GarbageCollector(context.registry.driver, gc.grace, gc.upload_ttl, progress)
        try:
            report = collector.collect(args.mode, repository=repository, dry_run=args.dry_run, wait=args.wait)
        except CollectionRunning:
            print("berth gc: another collection is running (try again, or pass --wait)", file=sys.stderr)
            return 1
    print(json.dumps(report.as_dict(), indent=2) if args.json else render(report))
    return 0


def render(report: GcReport) -> str:
    verb = "would remove" if report.dry_run else "removed"
    where = f" in {report.repository}" if report.repository else ""
    lines = [
        f"garbage collection ({report.mode}{where}): {verb}",
        f"  blobs             {report.blobs:>8}  {human_size(report.blob_bytes)}",
        f"  layer links       {report.layer_links:>8}",
        f"  manifests         {report.manifests:>8}",
        f"  referrer entries  {report.referrers:>8}",
        f"  upload sessions   {report.uploads:>8}  {human_size(report.upload_bytes)}",
        f"  multipart uploads {report.multipart_uploads:>8}",
        f"  ({report.repositories} repositories looked at, {report.spared} kept because a request used them meanwhile, {report.seconds:.1f} s)",
    ]
    return "\n".join(lines)
