"""Storage used, per repository and in total. A repository's size counts every blob it links
(what a copy of it would hold); EXCLUSIVE counts the blobs no other repository links (what
deleting it would free once garbage is collected). Totals count each stored blob once. The
walk lists every repository and sizes each blob once: on S3 that is a HEAD per blob."""

from __future__ import annotations

import argparse
import json
import sys

from cli.progress import Progress
from storage.digests import validate_name
from storage.usage import StorageUsage, UsageReport, human_size

NAME = "du"
HELP = "storage used per repository and in total (deduplicated)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", metavar="NAME", help="only this repository (no store-wide totals)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--top", type=int, metavar="N", help="list only the N largest repositories")


def run(args: argparse.Namespace, context) -> int:
    repository = validate_name(args.repository) if args.repository is not None else None
    with Progress("du", ("repositories", "blobs")) as progress:
        report = StorageUsage(context.registry, progress.advance).measure(repository)
    if repository is not None and not report.repositories[0].blobs:
        print(f"berth du: repository {repository!r} holds nothing", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(render(report, args.top))
    return 0


def render(report: UsageReport, top: int | None = None) -> str:
    shown = report.repositories if top is None else report.repositories[:top]
    width = max([len("REPOSITORY"), *(len(u.name) for u in shown)])
    lines = [f"{'REPOSITORY':<{width}}  {'SIZE':>10}  {'EXCLUSIVE':>10}  {'BLOBS':>7}"]
    for u in shown:
        lines.append(
            f"{u.name:<{width}}  {human_size(u.bytes):>10}  {human_size(u.exclusive_bytes):>10}  {u.blobs:>7}"
        )
    hidden = report.repositories[len(shown) :]
    if hidden:
        lines.append(f"({len(hidden)} more repositories, {human_size(sum(u.bytes for u in hidden))})")
    lines.append("")
    if report.stored_bytes is not None:
        lines.append(
            f"Stored:    {human_size(report.stored_bytes)} in {report.stored_blobs} blobs, each counted once"
        )
        lines.append(
            f"Linked:    {human_size(report.linked_bytes)} by {len(report.repositories)} repositories "
            f"({human_size(report.shared_bytes)} shared by several)"
        )
        lines.append(f"Unlinked:  {human_size(report.unlinked_bytes)} (no repository links them)")
    else:
        lines.append(f"Linked:    {human_size(report.linked_bytes)} in {report.linked_blobs} blobs")
    if report.missing_blobs:
        lines.append(f"Missing:   {report.missing_blobs} linked blobs are not in storage")
    return "\n".join(lines)
