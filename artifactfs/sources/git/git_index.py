"""The git index of a writable mount: every tracked entry of a snapshot, with the stat data the
mount shows, so that ``git status`` finds every unchanged file clean without reading it.

Each entry's stat fields are what ``getattr`` returns for it (``stat_of``, from the overlay):
inode, mode, size, mtime (and ctime, the same), uid, gid; ``dev`` is 0 (git compares it only
when built with ``USE_STDEV``, which Linux builds are not). git's stat check then passes for
every file nobody touched, and a touched file differs in its mtime, size or inode.

git re-reads an entry by content when its mtime is not older than the index file's own mtime
("racily clean"): on a mount that would fetch every blob. Entry mtimes are the commit time,
normally long past, but a commit dated in the future (a skewed clock) would hit it; so the
index file's mtime is set after every entry's mtime (``index_mtime_ns``).

The index carries git's ``FSMN`` extension (version 2: the fsmonitor token, then an EWAH
bitmap of the entries that are *not* known clean, here none), so the first ``git status``
after the git directory is made asks the fsmonitor hook what changed instead of stat-ing every
file. The token names the start of the journal's current epoch (``artifactfs:<epoch>:0``):
the hook then answers every path changed in the overlay since its last reset, which is exactly
what may differ from the snapshot this index describes. No journal yet: no extension (git then
checks every entry once, by stat, and writes the extension itself).

Written with dulwich's index writer (version 2), to a temporary renamed into place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import struct
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from dulwich.index import (
    IndexChecksumWriter,
    IndexExtension,
    SerializedIndexEntry,
    write_index,
)
from dulwich.object_format import get_object_format
from dulwich.objects import ObjectID

from ...overlay.journal import TOKEN_PREFIX
from ...snapshot import ROOT_INODE, Row, SnapshotIndex
from ...snapshot.entries import Kind
from ..base import LowerStat
from .cache_tree import CachedTree, cache_tree_extension
from .untracked_cache import IGNORE_FILE, CachedDirectory

log = logging.getLogger(__name__)

INDEX_VERSION = 2
FSMONITOR_SIGNATURE = b"FSMN"
FSMONITOR_VERSION = 2
_U32 = 0xFFFFFFFF
_NAME_MASK = 0x0FFF
_GIT_MODES = {
    Kind.FILE: 0o100644,
    Kind.EXECUTABLE: 0o100755,
    Kind.SYMLINK: 0o120000,
    Kind.SUBMODULE: 0o160000,
}
_PAGE = 2000


def index_entries(
    snapshot: SnapshotIndex,
    stat_of: Callable[[Row], LowerStat],
    directories: CachedDirectory | None = None,
    trees: CachedTree | None = None,
) -> list[SerializedIndexEntry]:
    """Every tracked entry of ``snapshot`` (files, executables, symlinks, gitlinks), sorted as
    git sorts its index (by path bytes), with ``stat_of``'s stat data (gitlinks: none; git
    looks at the directory instead). ``directories``, the root's, is filled with the tree's
    directories for the untracked cache (untracked_cache.py), and ``trees``, the root's, with
    its trees for the cache tree (cache_tree.py)."""
    root = snapshot.get(ROOT_INODE)
    if root is None:
        raise ValueError("the snapshot has no root")
    if directories is not None:
        directories.stat = stat_of(root)
    found: list[SerializedIndexEntry] = []
    queue: deque[tuple[Row, bytes, CachedDirectory | None, CachedTree | None]] = deque(
        [(root, b"", directories, trees)]
    )
    while queue:
        directory, prefix, cached, tree = queue.popleft()
        after = 0
        while rows := snapshot.children(directory, after, _PAGE):
            for row in rows:
                path = prefix + row.name
                if row.kind is Kind.DIRECTORY:
                    child = None
                    if cached is not None:
                        child = CachedDirectory(row.name, stat_of(row))
                        cached.children.append(child)
                    subtree = None
                    if tree is not None:
                        subtree = CachedTree(row.name, row.oid)
                        tree.subtrees.append(subtree)
                    queue.append((row, path + b"/", child, subtree))
                    continue
                if (
                    cached is not None
                    and row.name == IGNORE_FILE
                    and row.kind in (Kind.FILE, Kind.EXECUTABLE)
                    and row.oid is not None
                ):
                    cached.ignore_file_id = bytes.fromhex(row.oid)
                if len(path) >= _NAME_MASK:  # dulwich's writer cannot say so (git can)
                    log.warning("left out of the git index: a path of %d bytes", len(path))
                    if cached is not None:  # so git sees it as untracked, as it is
                        cached.untracked.append(row.name)
                    if tree is not None:
                        tree.complete = False
                else:
                    found.append(_entry(row, path, stat_of))
                    if tree is not None:
                        tree.entries += 1
            after = rows[-1].inode
    found.sort(key=lambda entry: entry.name)
    return found


def _entry(row: Row, path: bytes, stat_of: Callable[[Row], LowerStat]) -> SerializedIndexEntry:
    if row.oid is None:
        raise ValueError(f"entry {path!r} has no object id")
    mode = _GIT_MODES[row.kind]
    flags = 0  # the writer adds the name's length
    if row.kind is Kind.SUBMODULE:
        return SerializedIndexEntry(
            path, (0, 0), (0, 0), 0, 0, mode, 0, 0, 0, ObjectID(row.oid.encode()), flags, 0
        )
    lower = stat_of(row)
    when = _cache_time(lower.mtime_ns)
    return SerializedIndexEntry(
        name=path,
        ctime=when,
        mtime=when,
        dev=0,
        ino=lower.inode & _U32,
        mode=mode,
        uid=lower.uid & _U32,
        gid=lower.gid & _U32,
        size=lower.size & _U32,  # git keeps the low 32 bits of a size, as here
        sha=ObjectID(row.oid.encode("ascii")),
        flags=flags,
        extended_flags=0,
    )


def _cache_time(ns: int) -> tuple[int, int]:
    seconds, nanoseconds = divmod(max(ns, 0), 1_000_000_000)
    return seconds & _U32, nanoseconds


def fsmonitor_token(journal: Path) -> str | None:
    """The token naming the start of the journal's current epoch, or None if there is no
    journal to ask (yet)."""
    if not journal.exists():
        return None
    uri = f"{journal.absolute().as_uri()}?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True)
        try:
            found = connection.execute("SELECT epoch FROM journal_epoch WHERE id = 1").fetchone()
        finally:
            connection.close()
    except sqlite3.Error:
        return None
    if found is None:
        return None
    return f"{TOKEN_PREFIX}:{found[0]}:0"


def fsmonitor_extension(token: str) -> IndexExtension:
    """git's ``FSMN`` extension, version 2: ``token``, and an empty EWAH bitmap (no entry is
    dirty). An empty EWAH bitmap as git serialises one: bit size 0, one word (a run-length word
    of nothing), the position of that word."""
    bitmap = struct.pack(">IIQI", 0, 1, 0, 0)
    data = (
        struct.pack(">I", FSMONITOR_VERSION)
        + token.encode("ascii")
        + b"\0"
        + struct.pack(">I", len(bitmap))
        + bitmap
    )
    return IndexExtension(FSMONITOR_SIGNATURE, data)


def index_mtime_ns(entries: list[SerializedIndexEntry], now_ns: int | None = None) -> int:
    """An mtime for the index file after every entry's mtime (so none is racily clean): now,
    or a second past the newest entry if that is later."""
    now = time.time_ns() if now_ns is None else now_ns
    newest = 0
    for entry in entries:
        mtime = entry.mtime
        if isinstance(mtime, tuple):
            newest = max(newest, mtime[0] * 1_000_000_000 + mtime[1])
    return max(now, newest + 1_000_000_000)


def write_git_index(
    path: Path,
    temp: Path,
    entries: list[SerializedIndexEntry],
    object_format: str,
    token: str | None,
    untracked: IndexExtension | None = None,
    trees: CachedTree | None = None,
) -> None:
    """Write ``entries`` as git's index at ``path``, through ``temp`` (created here, exclusive:
    git's own ``index.lock`` keeps a git command out meanwhile), synced, its mtime after every
    entry's, then renamed into place. ``untracked``: the untracked cache (untracked_cache.py),
    written only with the fsmonitor token (git trusts its directories only then); ``trees``:
    the cache tree (cache_tree.py)."""
    extensions = [] if trees is None else [cache_tree_extension(trees)]
    if token is not None:
        if untracked is not None:
            extensions.append(untracked)
        extensions.append(fsmonitor_extension(token))
    fmt = get_object_format(object_format)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as raw:
            out = IndexChecksumWriter(raw, fmt)
            write_index(out, entries, INDEX_VERSION, extensions, fmt)
            out.write_checksum()
            raw.flush()
            os.fsync(raw.fileno())
        stamp = index_mtime_ns(entries)
        os.utime(temp, ns=(stamp, stamp))
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
