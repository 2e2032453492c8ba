"""The ``artifactfs`` command.

Bad input gets one line on stderr and a non-zero exit (``UserError``), never a traceback, and
is caught before anything is mounted or written. Each command imports what it needs when it
runs, so that ``mount`` can start its work before the heavy imports (see mount/head_start.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import UserError
from . import (
    cache_command,
    checkpoint_command,
    clone_command,
    config_command,
    daemon_commands,
    export_command,
    mount_commands,
    prefetch_command,
    tier_command,
    verify_command,
)

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="artifactfs",
        description="Mount a remote git or Hugging Face repository at once; fetch only the bytes"
        " that are read.",
        epilog="State (blob cache, snapshots, registry, logs) lives in $ARTIFACTFS_HOME "
        "(default: ~/.local/share/artifactfs). Commands that take NAME talk to the daemon; "
        "given a path (anything with a '/'), unmount and status act on that mount point.",
    )
    parser.add_argument("--version", action="version", version=f"artifactfs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    mount_commands.add_parsers(commands)
    daemon_commands.add_parsers(commands)
    verify_command.add_parser(commands)
    cache_command.add_parsers(commands)
    prefetch_command.add_parser(commands)
    export_command.add_parser(commands)
    clone_command.add_parser(commands)
    config_command.add_parser(commands)
    checkpoint_command.add_parsers(commands)
    tier_command.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.settings = config_command.effective(args)  # a bad setting: one line, before all
        result: int = args.run(args)
        return result
    except UserError as exc:
        print(f"artifactfs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
