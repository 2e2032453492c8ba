"""Collecting what nothing references (``artifactfs cache gc``).

The caller says what is referenced (the registered repositories' snapshots, pins, workspaces:
cli/cache_command.py knows where those live); this module removes everything else the store
holds, with the same care as eviction (cas/eviction.py ``remove_unused``): never a blob or
partial that is open or being fetched. It also removes what crashed writers left: temporaries
and partial maps' temporaries older than an hour, private partials whose process is gone,
claims nobody holds; and it reconciles the usage table with the disk (cas/usage.py).

Safe while mounts serve and other processes publish: a blob whose inode changed after the
collection started (``st_ctime``: publishing renames a new file into place, which sets it) is
kept, whether or not it is referenced, so a blob published during a collection survives it;
the references are read before the walk starts. A blob that was in the store before, is not
referenced, and is opened by a new mount just after it was removed is simply fetched again.

Blocking: the command line runs it in its own process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .claims import FetchClaims
from .digests import Digest
from .eviction import remove_unused
from .store import ContentStore
from .usage import UsageDB, reconcile, walk_store

LEFTOVER_SECONDS = 3600.0
CTIME_SLACK = 2.0
"""Clocks of file systems and of ``time.time`` differ by up to a tick: keep anything changed
this shortly before the collection started too."""


@dataclass
class GcReport:
    removed: int = 0
    freed: int = 0
    partials_removed: int = 0
    partial_bytes_freed: int = 0
    kept_referenced: int = 0
    kept_in_use: int = 0
    """Unreferenced, but open, being fetched, or published since the collection started."""
    leftovers: int = 0
    """Temporaries, stale private partials and claims removed."""
    removed_digests: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "removed": self.removed,
            "freed": self.freed,
            "partials_removed": self.partials_removed,
            "partial_bytes_freed": self.partial_bytes_freed,
            "kept_referenced": self.kept_referenced,
            "kept_in_use": self.kept_in_use,
            "leftovers": self.leftovers,
        }


def collect(
    cas_root: Path,
    referenced: Callable[[Digest], bool],
    dry_run: bool = False,
    started: float | None = None,
) -> GcReport:
    """Remove every blob and partial ``referenced`` says no to (see the module docstring)."""
    started = time.time() if started is None else started
    report = GcReport()
    db = UsageDB(cas_root)
    try:
        gone: list[tuple[Digest, bool]] = []
        for (digest, partial), (size, _) in walk_store(cas_root).items():
            if referenced(digest):
                report.kept_referenced += 1
                continue
            path = _path(cas_root, digest, partial)
            try:
                if os.lstat(path).st_ctime >= started - CTIME_SLACK:
                    report.kept_in_use += 1  # published (or started) during the collection
                    continue
            except FileNotFoundError:
                continue
            result = (
                _would_remove(cas_root, digest, partial)
                if dry_run
                else (remove_unused(cas_root, digest, partial))
            )
            if result == "busy":
                report.kept_in_use += 1
                continue
            if result == "removed":
                if partial:
                    report.partials_removed += 1
                    report.partial_bytes_freed += size
                else:
                    report.removed += 1
                    report.freed += size
                report.removed_digests.append(str(digest))
            gone.append((digest, partial))
        if not dry_run:
            db.forget(gone)
            report.leftovers = _leftovers(cas_root)
            reconcile(cas_root, db)
    finally:
        db.close()
    return report


def _path(cas_root: Path, digest: Digest, partial: bool) -> Path:
    base = cas_root / "partial" if partial else cas_root
    return base / digest.algorithm.name / digest.hex[:2] / digest.hex


def _would_remove(cas_root: Path, digest: Digest, partial: bool) -> str:
    """What ``remove_unused`` would do, without removing (``--dry-run``)."""
    if (cas_root / ".claims" / digest.hex).exists():
        return "busy"
    try:
        fd = os.open(_path(cas_root, digest, partial), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return "gone"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return "busy"
    finally:
        os.close(fd)
    return "removed"


def _leftovers(cas_root: Path) -> int:
    """Remove what crashed writers left behind; how many files."""
    removed = ContentStore(cas_root).sweep_temporaries(LEFTOVER_SECONDS)
    removed += FetchClaims(cas_root).sweep(LEFTOVER_SECONDS)
    cutoff = time.time() - LEFTOVER_SECONDS
    for temp in (cas_root / "partial").glob("*/*/*.blocks.tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            if temp.stat().st_mtime < cutoff:
                temp.unlink()
                removed += 1
    private = cas_root / "partial" / "private"
    if private.is_dir():
        for path in private.iterdir():
            removed += _remove_if_unlocked(path)
    return removed


def _remove_if_unlocked(path: Path) -> int:
    """A private partial is locked by its process for as long as it lives (cas/partial.py)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return 0
    try:
        if os.stat(path).st_mtime >= time.time() - LEFTOVER_SECONDS:
            return 0  # an older artifactfs did not lock these: leave young ones be
        path.unlink()
        return 1
    except FileNotFoundError:
        return 0
    finally:
        os.close(fd)
