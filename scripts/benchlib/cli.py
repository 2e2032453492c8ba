"""The frame every benchmark entry point shares: an expected failure is one line and status 1
(``BenchError``), SIGTERM and Ctrl-C end a run through its ``finally`` blocks (so mounts and
processes are cleaned up), progress goes to stderr, and the tools are checked before a run."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path


class BenchError(Exception):
    """An expected failure: reported as one line, without a traceback."""


def say(message: str) -> None:
    """Progress and warnings, on stderr (stdout carries the results)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def require_tools() -> Path:
    """Check the commands the benchmarks need; return the artifactfs executable."""
    for tool in ("git", "fusermount3"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed (scripts/install installs it)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise BenchError("/dev/fuse is missing or not accessible: cannot mount FUSE filesystems")
    beside = Path(sys.executable).parent / "artifactfs"
    found = beside if beside.exists() else shutil.which("artifactfs")
    if found is None:
        raise BenchError("artifactfs is not installed: run scripts/bench (it installs .venv)")
    return Path(found)


def run_reporting(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a benchmark: a BenchError is one line and status 1, SIGTERM and ^C end it cleanly
    (its ``finally`` blocks unmount and stop what it started)."""
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    try:
        return run(args)
    except BenchError as exc:
        say(str(exc))
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
