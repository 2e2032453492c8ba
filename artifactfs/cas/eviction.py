"""The store's size cap: which blobs go, and how they go without harming a reader.

Policy (the numbers are ``CachePolicy``'s):

- the cap (``--cache-max-size``, ``ARTIFACTFS_CACHE_MAX_SIZE``) defaults to 10 % of the file
  system that holds the state home, at least 1 GiB and at most 10 GiB. 10 GiB is what hf-mount
  caps its cache at, enough for a 7B model in bf16 or hundreds of repositories' sources; 10 %
  leaves a small disk (a CI runner's 14 GiB) to the job that runs on it; below 1 GiB a cache
  could not hold one model shard, and on a file system smaller than that the disk is the limit
  (a full disk still answers ENOSPC, as before there was a cap);
- when the recorded usage passes the cap, blobs and partials go, least recently used first,
  until it is under the *low-water mark* (the cap less 10 %): evicting a little more than
  needed means eviction runs once per 10 % of new content, not once per blob;
- eviction runs off the read path (cas/upkeep.py). Past the *hard limit* (the cap plus 10 %),
  reached only when blobs arrive faster than the background evicts, the thread publishing a
  blob evicts before its reader is answered: the store is never more than 10 % over its cap,
  however fast content arrives (plus partials' growth since their last flush, 2 s).

What never goes:

- a blob open in a mount: a reader holds a shared ``flock`` on every CAS file it has open
  (``cas.reads.hold``), released with its descriptor; the evictor takes an exclusive one, on its
  own descriptor, without waiting, and unlinks only if it got it and the path still names that
  file. A reader that opens a blob while it is being evicted finds the lock taken or the path
  gone and fetches it again. So an open file's blob stays in the store until it is closed.
- a blob being fetched: a fetch in progress holds a claim (cas/claims.py) or its partial's
  ``flock`` (cas/partial.py); either makes the evictor pass it by. A blob being published is a
  temporary, which eviction never looks at.
- a pinned blob (``pins`` in cas/usage.py), skipped by the query that lists candidates.

A blob evicted from under a snapshot is simply fetched again on its next read (verified like
any fetch); the sizes the snapshot learned stay right, since they were learned from verified
content and a digest's content never changes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..settings import parse_size as parse_size  # where it was first
from .digests import Digest
from .usage import Entry, UsageDB

log = logging.getLogger(__name__)

MAX_SIZE_ENV = "ARTIFACTFS_CACHE_MAX_SIZE"  # the setting cache.max_size (settings.py)
GiB = 1 << 30
DEFAULT_SHARE = 0.10
DEFAULT_MIN = 1 * GiB
DEFAULT_MAX = 10 * GiB
MARGIN = 0.10
"""Low-water mark: the cap less this share; hard limit: the cap plus this share."""
PAGE = 512
EVICT_LOCK = ".evict.lock"


def format_size(size: int) -> str:
    """Bytes for people: ``3.2 GiB``, ``512 KiB``, ``17 B``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def default_max_size(home: Path) -> int:
    """10 % of the home's file system, within [1 GiB, 10 GiB] (see the module docstring)."""
    try:
        stat = os.statvfs(home)
        total = stat.f_blocks * stat.f_frsize
    except OSError:
        return DEFAULT_MAX
    return int(min(DEFAULT_MAX, max(DEFAULT_MIN, total * DEFAULT_SHARE)))


@dataclass(frozen=True)
class CachePolicy:
    max_size: int

    @property
    def low_water(self) -> int:
        return int(self.max_size * (1 - MARGIN))

    @property
    def hard_limit(self) -> int:
        return int(self.max_size * (1 + MARGIN))

    def over(self, total: int) -> bool:
        return total > self.max_size

    @classmethod
    def of(cls, max_size: int | None, home: Path) -> CachePolicy:
        """The setting ``cache.max_size`` (None: its default, worked out for ``home``)."""
        return cls(max_size if max_size is not None else default_max_size(home))

    @classmethod
    def resolve(
        cls, flag: str | None, home: Path, environ: dict[str, str] | None = None
    ) -> CachePolicy:
        """The flag, else ``ARTIFACTFS_CACHE_MAX_SIZE``, else the default. Raises ValueError
        naming where a bad value came from."""
        env = os.environ if environ is None else environ
        for origin, text in (("--cache-max-size", flag), (MAX_SIZE_ENV, env.get(MAX_SIZE_ENV))):
            if text:
                try:
                    size = parse_size(text)
                except ValueError as exc:
                    raise ValueError(f"{origin}: {exc}") from None
                if size <= 0:
                    raise ValueError(f"{origin}: the cache needs more than 0 bytes")
                return cls(size)
        return cls(default_max_size(home))


# -- removing one blob safely -----------------------------------------------------------------


def blob_path(cas_root: Path, digest: Digest, partial: bool = False) -> Path:
    base = cas_root / "partial" if partial else cas_root
    return base / digest.algorithm.name / digest.hex[:2] / digest.hex


def being_fetched(cas_root: Path, digest: Digest) -> bool:
    """A claim file exists for it (cas/claims.py): someone fetches it, or crashed doing so
    (swept after an hour). Either way, leave it be."""
    return (cas_root / ".claims" / digest.hex).exists()


def remove_unused(cas_root: Path, digest: Digest, partial: bool) -> str:
    """Remove a blob (or a partial and its map) unless someone has it open or fetches it.
    Returns ``"removed"``, ``"gone"`` (it was not there) or ``"busy"``. Blocking."""
    path = blob_path(cas_root, digest, partial)
    if being_fetched(cas_root, digest):
        return "busy"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        if partial:  # a map without its data is worth nothing either
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path.with_name(path.name + ".blocks"))
        return "gone"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return "busy"  # open in a mount, or a partial being filled
            raise
        try:
            here = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return "gone"
        mine = os.fstat(fd)
        if (here.st_ino, here.st_dev) != (mine.st_ino, mine.st_dev):
            return "busy"  # published again under us: that copy may be open already
        if partial:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path.with_name(path.name + ".blocks"))
        os.unlink(path)
        return "removed"
    finally:
        os.close(fd)  # releases our lock


# -- evicting ---------------------------------------------------------------------------------


@dataclass
class EvictionReport:
    before: int = 0
    after: int = 0
    removed: int = 0
    freed: int = 0
    busy: int = 0
    """Candidates passed by because they were open or being fetched."""
    busy_bytes: int = 0
    removed_digests: list[Digest] = field(default_factory=list)


def evict(cas_root: Path, db: UsageDB, target: int, keep_digests: bool = False) -> EvictionReport:
    """Remove least-recently-used, unpinned, unused blobs and partials until the recorded
    total is at most ``target``. One evictor at a time per store (an ``flock``: a second one
    waits, then finds little or nothing left to do). Blocking; its time is bounded by the
    rows it looks at: those it removes plus those in use."""
    report = EvictionReport()
    lock = os.open(cas_root / EVICT_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        report.before = total = db.total()
        after: tuple[float, str, str, int] | None = None
        while total > target:
            page = db.lru(after, PAGE)
            if not page:
                break
            gone: list[tuple[Digest, bool]] = []
            for entry in page:
                if total <= target:
                    break
                result = _remove(cas_root, entry)
                if result == "busy":
                    report.busy += 1
                    report.busy_bytes += entry.size
                    continue
                gone.append((entry.digest, entry.partial))
                total -= entry.size
                if result == "removed":
                    report.removed += 1
                    report.freed += entry.size
                    if keep_digests:
                        report.removed_digests.append(entry.digest)
            db.forget(gone)
            last = page[-1]
            after = (last.atime, last.digest.algorithm.name, last.digest.hex, int(last.partial))
            total = db.total()  # others record and evict meanwhile
        report.after = total
    finally:
        os.close(lock)
    if report.removed:
        log.info(
            "evicted %d blob(s), %s: the store holds %s (%d in use passed by)",
            report.removed,
            format_size(report.freed),
            format_size(report.after),
            report.busy,
        )
    return report


def _remove(cas_root: Path, entry: Entry) -> str:
    try:
        return remove_unused(cas_root, entry.digest, entry.partial)
    except OSError as exc:  # a file we cannot remove is skipped, never the end of eviction
        log.warning("could not evict %s: %s", entry.digest, exc)
        return "busy"
