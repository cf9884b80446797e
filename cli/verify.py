"""Rehash every stored blob (or a repository's) against its digest, and check every link has its
data. Reads only. Exits 0 when everything verifies, 1 when a blob is corrupt or missing (listed)."""

from __future__ import annotations

import argparse
import json

from cli.progress import GcProgress
from storage.digests import validate_name
from storage.usage import human_size
from storage.verify import verify

NAME = "verify"
HELP = "rehash stored blobs and find corrupt or missing ones"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", metavar="NAME", help="only the blobs this repository links")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace, context) -> int:
    repository = validate_name(args.repository) if args.repository is not None else None
    with GcProgress("verify") as progress:
        report = verify(context.registry.driver, repository, progress)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"verified {report.blobs} blobs ({human_size(report.bytes)})")
        for digest in report.corrupt:
            print(f"CORRUPT {digest}")
        for item in report.missing:
            print(f"MISSING {item}")
    return 0 if report.ok else 1
