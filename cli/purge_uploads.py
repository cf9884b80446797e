"""Purge upload sessions idle for longer than --older-than (default REGISTRY_UPLOAD_TTL), with
their data, and on S3/R2 abort their multipart uploads and those no session owns. A session a
request is writing is never touched. The rest of garbage collection is left alone."""

from __future__ import annotations

import argparse
import json
import sys

from cli.progress import GcProgress
from settings import parse_duration
from storage.gc import CollectionRunning, GarbageCollector
from storage.usage import human_size

NAME = "purge-uploads"
HELP = "remove idle upload sessions and orphaned multipart uploads"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--older-than",
        metavar="DURATION",
        help="idle longer than this: 90s, 15m, 2h, 7d (default REGISTRY_UPLOAD_TTL)",
    )
    parser.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace, context) -> int:
    ttl = context.settings.gc.upload_ttl
    if args.older_than is not None:
        try:
            ttl = parse_duration(args.older_than)
        except ValueError:
            print(
                f"berth purge-uploads: --older-than must be a duration such as 90s, 15m or 7d, not {args.older_than!r}",
                file=sys.stderr,
            )
            return 2
    with GcProgress("purge-uploads") as progress:
        collector = GarbageCollector(context.registry.driver, context.settings.gc.grace, ttl, progress)
        try:
            report = collector.purge_uploads(dry_run=args.dry_run)
        except CollectionRunning:
            print("berth purge-uploads: a collection is running (it purges uploads too)", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        verb = "would remove" if report.dry_run else "removed"
        print(
            f"upload purge: {verb} {report.uploads} sessions ({human_size(report.upload_bytes)}) and {report.multipart_uploads} multipart uploads"
        )
    return 0
