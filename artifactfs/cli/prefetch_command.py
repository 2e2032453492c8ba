"""``artifactfs prefetch NAME [PATH…] [--async]``: fetch a repository's contents ahead of need.

It walks the repository's mount as ``grep -r`` would — list a directory, read its files, go
on to the next — with a few readers at once, and reads every file whole. That is on purpose:
the worker already turns such a walk into large batches (sources/git/walks.py recognises a
program walking the tree from what it lists, and fetches the directories ahead of it in chunks
of up to 4,096 files, in child processes; the first miss in a directory brings its other small
files in one pack; a Hub file read whole streams with a window of up to 64 MiB in parallel
ranges), and every byte comes through the one path that verifies it. Listing fetches nothing,
so the walk first lists everything to know the total, then reads.

``--async`` leaves the walk to a process of its own (in its own session, logging to
``run/logs/prefetch-NAME.log``) and returns at once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cas.eviction import format_size
from ..errors import UserError

READERS = 8
PROFILE_READERS = 64
"""A profile's files are read this many at once, so that the worker gathers the misses that
arrive together into one fetch. The kernel passes a mount only about a dozen requests at once
(FUSE's ``max_background``), so its fetches hold 2 to 25 files (850 small files: 56 fetches,
2.5 to 3 s on loopback); more readers gain little. Handing the worker the whole list (a
control request) would make that one fetch: see docs/architecture.md."""
READ_CHUNK = 1 << 20
WORKER_CHUNK = 1000
"""Paths per request to the worker: one git pack each, and a progress step."""
EXIT_SOME_FAILED = 1


def add_parser(commands: Any) -> None:
    prefetch = commands.add_parser(
        "prefetch",
        help="fetch a repository's (or some paths') contents ahead of need",
        description="Fetch the contents of NAME (or of PATHs in it: files, or directories "
        "and all below) into the cache now, in large batches, through its mount. A progress "
        "line on a terminal, a summary otherwise. With --async, return at once and leave it "
        "to a background process.",
    )
    prefetch.add_argument("name", metavar="NAME")
    prefetch.add_argument("paths", metavar="PATH", nargs="*", help="paths in the repository")
    prefetch.add_argument(
        "--profile",
        metavar="FILE",
        help="an access profile (mount --record-profile): fetch its paths first, in its order "
        "(paths not in this commit are skipped)",
    )
    prefetch.add_argument("--async", dest="async_", action="store_true", help="return at once")
    prefetch.set_defaults(run=prefetch_command)


def prefetch_command(args: argparse.Namespace) -> int:
    return prefetch(args.name, args.paths, args.profile, args.async_)


def prefetch(name: str, given: list[str], profile: str | None, async_: bool = False) -> int:
    """``prefetch NAME [PATH…] [--profile FILE] [--async]`` (``add-repo --profile`` too)."""
    from .repositories import home as state_home
    from .repositories import known

    home = state_home()
    profiled = profile_paths(profile) if profile else []
    repo = known(home, name)
    mountpoint = Path(repo.mountpoint)
    check_mounted(mountpoint, name)
    paths = [p.strip("/") for p in given] or ([] if profiled else [""])
    if async_:
        for path in paths:
            _check_path(mountpoint, path, name)
        return start_in_background(home, name, paths, profile)
    for path in paths:  # after --async: this waits for the tree to be ready
        _check_path(mountpoint, path, name)
    started = time.monotonic()
    progress = sys.stderr.isatty()
    report = fetch_by_worker(home, name, profiled + paths, progress)
    if report is None:  # a worker that does not take the request: walk its mount instead
        report = ReadReport()
        if profiled:  # first, and in its order
            report = read_through(mountpoint, profiled, progress, PROFILE_READERS, walk=False)
        if paths:
            report.add(read_through(mountpoint, paths, progress))
    took = time.monotonic() - started
    print(
        f"prefetched {report.files} file(s) of {name} ({format_size(report.bytes)}) in "
        f"{took:.1f} s"
        + (f"; {report.absent} of the profile's paths are not in this commit" if report.absent
           else "")
        + (f"; {report.failed} could not be read" if report.failed else "")
    )  # fmt: skip
    return EXIT_SOME_FAILED if report.failed else 0


def fetch_by_worker(home: Any, name: str, paths: list[str], progress: bool) -> ReadReport | None:
    """Ask the repository's worker (its control socket, mount/control.py) to fetch ``paths``,
    in order, ``WORKER_CHUNK`` at a time: each chunk is one request, and the worker fetches a
    chunk in as few fetches as its source allows (a git pack per 1,000 blobs). None if the
    worker cannot be asked (no socket, or it does not know the request)."""
    from ..ipc import ProtocolError, request_blocking

    socket_path = home.worker_socket(name)
    if not socket_path.exists():
        return None
    report = ReadReport()
    for start in range(0, len(paths), WORKER_CHUNK):
        chunk = paths[start : start + WORKER_CHUNK]
        try:
            answer = next(
                iter(request_blocking(str(socket_path), {"cmd": "prefetch", "paths": chunk})), None
            )
        except (OSError, ProtocolError) as exc:
            if start == 0:
                return None
            raise UserError(f"the worker of {name} stopped answering: {exc}") from None
        if answer is None or not answer.get("ok"):
            error = str((answer or {}).get("error", "no answer"))
            if start == 0 and error.startswith("unknown command"):
                return None
            raise UserError(f"prefetch of {name} failed: {error}")
        report.add(ReadReport(
            int(answer["files"]), int(answer["bytes"]), int(answer["failed"]), int(answer["absent"])
        ))  # fmt: skip
        if progress:
            sys.stderr.write(f"\rprefetching: {min(start + WORKER_CHUNK, len(paths))}/{len(paths)} "
                             f"paths, {format_size(report.bytes)} ")  # fmt: skip
            sys.stderr.flush()
    if progress:
        sys.stderr.write("\n")
    return report


def profile_paths(text: str) -> list[str]:
    from ..mount.profile import read_profile

    try:
        return read_profile(text)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _check_path(mountpoint: Path, path: str, name: str) -> None:
    if any(part in (".", "..") for part in path.split("/")):
        raise UserError(f"{name} has no path {path!r}")
    if not os.path.lexists(mountpoint / path):
        raise UserError(f"{name} has no path {path!r}")


def check_mounted(mountpoint: Path, name: str) -> None:
    from ..mount.mountpoints import FS_TYPE, mount_at

    entry = mount_at(mountpoint)
    if entry is None or entry.fs_type != FS_TYPE:
        raise UserError(f"{name} is not mounted at {mountpoint} (artifactfs remount {name})")


def start_in_background(home: Any, name: str, paths: list[str], profile: str | None) -> int:
    """Leave the prefetch to a process of its own (``--async``, ``add-repo --profile``): it
    reads through the mount, so it waits for the tree to be ready by itself."""
    log_path = home.logs_dir / f"prefetch-{name}.log"
    command = [sys.executable, "-P", "-m", "artifactfs", "prefetch", name, *paths]
    if profile is not None:
        command += ["--profile", os.path.abspath(profile)]
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env={**os.environ, "ARTIFACTFS_HOME": str(home.root)},
        )
    print(f"prefetching {name} in the background (pid {child.pid}); it reports to {log_path}")
    return 0


@dataclass
class ReadReport:
    files: int = 0
    bytes: int = 0
    failed: int = 0
    absent: int = 0
    """Paths asked for that are not in the tree (a profile of another commit)."""

    def add(self, other: ReadReport) -> None:
        self.files += other.files
        self.bytes += other.bytes
        self.failed += other.failed
        self.absent += other.absent


def read_through(
    mountpoint: Path,
    paths: Iterable[str],
    progress: bool = False,
    readers: int = READERS,
    walk: bool = True,
) -> ReadReport:
    """Read every file at or below ``paths`` (relative to ``mountpoint``) whole, in the order a
    recursive walk visits them (``walk``; else the files of ``paths`` in their order),
    ``readers`` at a time."""
    paths = list(paths)
    files = _walk(mountpoint, paths) if walk else _files(mountpoint, paths)
    total = sum(size for _, size in files)
    report = ReadReport(absent=0 if walk else len(paths) - len(files))
    lock = threading.Lock()
    shown = _Progress(total, len(files)) if progress else None

    def read(entry: tuple[Path, int]) -> None:
        path, _ = entry
        got = 0
        ok = True
        try:
            with open(path, "rb", buffering=0) as handle:
                while chunk := handle.read(READ_CHUNK):
                    got += len(chunk)
                    if shown is not None:
                        shown.add(len(chunk), 0)
        except OSError:
            ok = False
        with lock:
            report.files += ok
            report.failed += not ok
            report.bytes += got
        if shown is not None:
            shown.add(0, 1)

    with ThreadPoolExecutor(readers) as pool:
        list(pool.map(read, files))
    if shown is not None:
        shown.done()
    return report


def _files(mountpoint: Path, paths: list[str]) -> list[tuple[Path, int]]:
    """The regular files among ``paths``, in their order, with their sizes."""
    found = []
    for path in paths:
        with contextlib.suppress(OSError):
            info = os.lstat(mountpoint / path)
            if stat.S_ISREG(info.st_mode):
                found.append((mountpoint / path, info.st_size))
    return found


def _walk(mountpoint: Path, paths: Iterable[str]) -> list[tuple[Path, int]]:
    """Regular files (with their sizes) at or below ``paths``, in ``grep -r``'s order: a
    directory's files, then its subdirectories. Symbolic links are not followed."""
    found: list[tuple[Path, int]] = []
    seen: set[Path] = set()

    def visit(path: Path) -> None:
        try:
            info = os.lstat(path)
        except OSError:
            return
        if stat.S_ISREG(info.st_mode):
            if path not in seen:
                seen.add(path)
                found.append((path, info.st_size))
            return
        if not stat.S_ISDIR(info.st_mode):
            return
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            return
        directories = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                directories.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                visit(Path(entry.path))
        for directory in directories:
            visit(directory)

    for given in paths:
        visit(mountpoint / given if given else mountpoint)
    return found


class _Progress:
    """One updating line on a terminal (updated at most 10 times a second)."""

    def __init__(
        self, total_bytes: int, total_files: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._total_bytes = total_bytes
        self._total_files = total_files
        self._bytes = 0
        self._files = 0
        self._clock = clock
        self._shown = 0.0
        self._lock = threading.Lock()

    def add(self, data: int, files: int) -> None:
        with self._lock:
            self._bytes += data
            self._files += files
            now = self._clock()
            if now - self._shown < 0.1 and self._files < self._total_files:
                return
            self._shown = now
            sys.stderr.write(
                f"\rprefetching: {self._files}/{self._total_files} files, "
                f"{format_size(self._bytes)} of {format_size(self._total_bytes)} "
            )
            sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")
