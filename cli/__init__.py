"""The operator command line (`python -m berth <command>`, see berth.py).

Each command is a module here with NAME, HELP, `add_arguments(parser)` and `run(args, context)`
returning the exit status; adding one is a module and a line in COMMANDS. Commands read the
server's settings (Settings.from_env) and open its storage (storage.driver_from_settings), and
share what every command needs: one line for a bad setting or a storage failure, exit status
130 on Ctrl-C, progress on a terminal (cli/progress.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from errors import RegistryError
from observability import log_format
from settings import Settings, SettingsError
from storage import driver_from_settings
from storage.driver import StorageDriver, StorageError
from storage.registry import Registry

from . import du, gc, purge_uploads, verify

COMMANDS = (gc, purge_uploads, du, verify)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass
class Context:
    settings: Settings
    registry: Registry


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m berth",
        description="Berth's operator commands. They read the server's settings from the environment.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = commands.add_parser(command.NAME, help=command.HELP, description=command.__doc__)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return top


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    driver: StorageDriver | None = None,
) -> int:
    """Run one command; `env` and `driver` are seams for tests (default: the environment and
    the storage it names)."""
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        print(f"berth: invalid settings: {exc}", file=sys.stderr)
        return EXIT_USAGE
    log_format.configure(settings.observability.log_format)
    try:
        registry = Registry(driver or driver_from_settings(settings))
        return args.run(args, Context(settings, registry))
    except KeyboardInterrupt:
        print(f"berth {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RegistryError as exc:  # a bad argument (a malformed repository name...)
        print(f"berth {args.command}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except StorageError as exc:
        print(f"berth {args.command}: storage failed: {exc!r}", file=sys.stderr)
        return EXIT_FAILED
