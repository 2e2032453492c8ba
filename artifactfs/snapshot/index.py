"""The persisted, immutable index of one commit's tree, in SQLite.

A snapshot is written once (``write_snapshot``) into a temporary file that is renamed into
place when complete, so a snapshot file that exists is whole. It is keyed by commit, which
makes it content-addressed: a restart or a second mount of the same commit reuses it without
fetching metadata again. The one thing that may be filled in later is a size the server could
not tell us up front (``size`` NULL), once the blob itself has been fetched.

Inode numbers are the row ids. Entries are numbered breadth-first and the children of every
directory get consecutive numbers, so a directory lists as a primary-key range and the same
commit always gets the same inode numbers.

Concurrency: reads are short indexed point queries run on the trio loop (as s3ql does); the
bulk write runs in a worker thread on its own connection.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..cas import SHA256, Digest
from ..cas.digests import git_blob_algorithm
from .entries import Kind, NewEntry

SCHEMA_VERSION = 2
ROOT_INODE = 1

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,  -- see SnapshotMeta for the keys
    value TEXT NOT NULL
);
CREATE TABLE entries (
    inode       INTEGER PRIMARY KEY,  -- stable inode number; 1 is the root, which is its own parent
    parent      INTEGER NOT NULL,     -- inode of the containing directory
    name        BLOB NOT NULL,        -- one validated path component, bytes as the tree has them
    kind        INTEGER NOT NULL,     -- entries.Kind
    oid         TEXT,                 -- hex object id (blob, tree or gitlink commit); NULL for root
    size        INTEGER,              -- content bytes; NULL = not known yet (filled once fetched)
    target      BLOB,                 -- symlink target; NULL unless kind = SYMLINK
    first_child INTEGER NOT NULL DEFAULT 0,  -- directories: inode of the first child (0 if none)
    child_count INTEGER NOT NULL DEFAULT 0,  -- directories: number of children, numbered
                                             -- first_child .. first_child + child_count - 1
    subdirs     INTEGER NOT NULL DEFAULT 0,  -- directories: children that are directories
    sha256      TEXT                  -- plain sha256 of the content, when the origin vouches
                                      -- for one (Hub LFS files); the CAS key then; else NULL
);
CREATE UNIQUE INDEX entries_by_name ON entries (parent, name);
"""

_COLUMNS = "inode, parent, name, kind, oid, size, target, first_child, child_count, subdirs, sha256"


@dataclass(frozen=True, slots=True)
class Row:
    inode: int
    parent: int
    name: bytes
    kind: Kind
    oid: str | None
    size: int | None
    target: bytes | None
    first_child: int
    child_count: int
    subdirs: int
    sha256: str | None

    @property
    def size_unknown(self) -> bool:
        """A blob whose size the origin did not tell (learned once the blob is fetched)."""
        return self.size is None and self.kind.has_blob


def _row(values: Any) -> Row:
    inode, parent, name, kind, *rest = values
    return Row(inode, parent, bytes(name), Kind(kind), *rest)


@dataclass(frozen=True)
class SnapshotMeta:
    """What a snapshot records about itself."""

    commit: str
    object_format: str
    commit_time: int
    """Seconds since the epoch; every entry's mtime, as ``git archive`` does."""
    files: int
    total_size: int
    """Sum of known file sizes."""
    sizes: str
    """``complete`` when every blob size is known, ``on-demand`` when some are NULL."""


def snapshot_path(directory: Path, commit: str, origin: str = "git") -> Path:
    """Where the snapshot of ``commit`` lives; ``origin`` is ``git`` or ``hub``."""
    return directory / f"{origin}-{commit}.v{SCHEMA_VERSION}.sqlite"


K = TypeVar("K")


@dataclass
class DirectoryListing(Generic[K]):
    """The children of one directory, and for each child directory the key of its listing."""

    entries: list[NewEntry]
    child_keys: list[K | None]
    """Parallel to ``entries``: for directories a key the walker passes back, else None."""


def write_snapshot(
    path: Path,
    commit: str,
    object_format: str,
    commit_time: int,
    root_key: K,
    list_directory: Callable[[K], DirectoryListing[K]],
) -> SnapshotMeta:
    """Write a snapshot breadth-first into ``path`` atomically (blocking; run it in a thread).

    ``list_directory(key)`` returns the validated children of the directory ``key`` names,
    starting from ``root_key``.
    """
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    db = sqlite3.connect(temp, isolation_level=None)
    try:
        db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;")
        db.executescript(_SCHEMA)
        db.execute("BEGIN")
        db.execute(
            "INSERT INTO entries (inode, parent, name, kind) VALUES (?, ?, ?, ?)",
            (ROOT_INODE, ROOT_INODE, b"", int(Kind.DIRECTORY)),
        )
        files = total = 0
        all_sizes_known = True
        next_inode = ROOT_INODE + 1
        pending: list[tuple[int, K]] = [(ROOT_INODE, root_key)]
        while pending:
            level, pending = pending, []
            for dir_inode, key in level:
                listing = list_directory(key)
                first = next_inode if listing.entries else 0
                subdirs = 0
                rows = []
                for entry, child_key in zip(listing.entries, listing.child_keys, strict=True):
                    inode = next_inode
                    next_inode += 1
                    rows.append(
                        (
                            inode,
                            dir_inode,
                            entry.name,
                            int(entry.kind),
                            entry.oid,
                            entry.size,
                            entry.target,
                            entry.sha256,
                        )
                    )
                    if entry.kind.is_directory:
                        subdirs += 1
                        if child_key is not None:
                            pending.append((inode, child_key))
                    else:
                        files += 1
                        if entry.size is None:
                            all_sizes_known = False
                        else:
                            total += entry.size
                db.executemany(
                    "INSERT INTO entries (inode, parent, name, kind, oid, size, target, sha256)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                db.execute(
                    "UPDATE entries SET first_child = ?, child_count = ?, subdirs = ?"
                    " WHERE inode = ?",
                    (first, len(rows), subdirs, dir_inode),
                )
        meta = SnapshotMeta(
            commit=commit,
            object_format=object_format,
            commit_time=commit_time,
            files=files,
            total_size=total,
            sizes="complete" if all_sizes_known else "on-demand",
        )
        db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [
                ("schema_version", str(SCHEMA_VERSION)),
                ("commit", meta.commit),
                ("object_format", meta.object_format),
                ("commit_time", str(meta.commit_time)),
                ("files", str(meta.files)),
                ("total_size", str(meta.total_size)),
                ("sizes", meta.sizes),
            ],
        )
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode=WAL")
    except BaseException:  # a listing that failed (or was refused) leaves nothing behind
        db.close()
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    finally:
        db.close()
    try:
        fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _publish_once(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    return meta


def _publish_once(temp: Path, path: Path) -> None:
    """Give ``temp`` the name ``path`` unless a snapshot is already published there.

    A link, not a rename: another process may have published the same commit meanwhile and
    have it open, and a published snapshot is never replaced. File systems without hard links
    fall back to a rename when the name is free.
    """
    try:
        os.link(temp, path)
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if not path.exists():
            os.rename(temp, path)


def sweep_snapshot_temporaries(directory: Path, older_than_seconds: float) -> int:
    """Remove half-written snapshots that crashed writers left; return how many."""
    cutoff = time.time() - older_than_seconds
    removed = 0
    for temp in directory.glob(".*-*.tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            if temp.stat().st_mtime < cutoff:
                temp.unlink()
                removed += 1
    return removed


class SnapshotIndex:
    """Read access to a written snapshot, plus late size updates."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None
        values = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if values.get("schema_version") != str(SCHEMA_VERSION):
            self.close()
            raise ValueError(f"{path}: not a version {SCHEMA_VERSION} snapshot")
        self.meta = SnapshotMeta(
            commit=values["commit"],
            object_format=values["object_format"],
            commit_time=int(values["commit_time"]),
            files=int(values["files"]),
            total_size=int(values["total_size"]),
            sizes=values["sizes"],
        )

    def digest_of(self, row: Row) -> Digest:
        """The CAS key of an entry's content: the sha256 the origin vouches for (Hub LFS
        files), else its git blob id in this snapshot's object format."""
        if row.sha256 is not None:
            return Digest(SHA256, row.sha256)
        if row.oid is None:
            raise ValueError(f"entry {row.inode} has no content")
        return Digest(git_blob_algorithm(self.meta.object_format), row.oid)

    def content_digests(self) -> Iterator[Digest]:
        """The CAS key of every entry that has content (``artifactfs verify NAME``)."""
        found = self._db.execute(
            "SELECT oid, sha256 FROM entries WHERE kind IN (?, ?, ?) AND oid IS NOT NULL",
            (int(Kind.FILE), int(Kind.EXECUTABLE), int(Kind.SYMLINK)),
        )
        algorithm = git_blob_algorithm(self.meta.object_format)
        for oid, sha256 in found:
            yield Digest(SHA256, sha256) if sha256 is not None else Digest(algorithm, oid)

    def blob_sizes(self) -> dict[str, int]:
        """Every known blob size, by object id (the sizes a snapshot of the same commit,
        indexed again from its trees, may take: tier_prepare.py)."""
        found = self._db.execute(
            "SELECT oid, size FROM entries WHERE kind IN (?, ?, ?) AND oid IS NOT NULL"
            " AND size IS NOT NULL",
            (int(Kind.FILE), int(Kind.EXECUTABLE), int(Kind.SYMLINK)),
        )
        return {oid: size for oid, size in found}

    @classmethod
    def read_meta(cls, path: Path) -> SnapshotMeta:
        index = cls(path)
        try:
            return index.meta
        finally:
            index.close()

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection, opened again if it was released."""
        if self._connection is None:
            # a short busy timeout: the loop must never wait long on another process's write
            connection = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=0.1
            )
            connection.execute("PRAGMA synchronous=NORMAL")
            self._connection = connection
        return self._connection

    def release(self) -> None:
        """Close the connection (three descriptors in WAL mode) until the index is used again:
        a mount keeps older snapshots the kernel still knows, and they are rarely read."""
        self.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def get(self, inode: int) -> Row | None:
        found = self._db.execute(f"SELECT {_COLUMNS} FROM entries WHERE inode = ?", (inode,))
        values = found.fetchone()
        return _row(values) if values else None

    def lookup(self, parent: int, name: bytes) -> Row | None:
        found = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE parent = ? AND name = ?", (parent, name)
        )
        values = found.fetchone()
        return _row(values) if values else None

    def children(self, directory: Row, after_inode: int = 0, limit: int = 1000) -> list[Row]:
        """Children in tree order, starting after ``after_inode`` (0: from the first)."""
        if not directory.child_count:
            return []
        start = max(directory.first_child, after_inode + 1)
        end = directory.first_child + directory.child_count - 1
        found = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE inode BETWEEN ? AND ? ORDER BY inode LIMIT ?",
            (start, end, limit),
        )
        return [_row(values) for values in found]

    def path_of(self, inode: int) -> bytes:
        """The entry's path from the root, components joined by ``/`` (the root is ``b""``)."""
        parts: list[bytes] = []
        row = self.get(inode)
        while row is not None and row.inode != ROOT_INODE:
            parts.append(row.name)
            row = self.get(row.parent)
        return b"/".join(reversed(parts))

    def unknown_size_siblings(self, row: Row) -> list[Row]:
        """Blob entries in ``row``'s directory whose size is not known yet (``row`` included)."""
        found = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE parent = ? AND size IS NULL AND kind IN (?, ?)",
            (row.parent, int(Kind.FILE), int(Kind.EXECUTABLE)),
        )
        return [_row(values) for values in found]

    def record_sizes(self, sizes: dict[int, int]) -> bool:
        """Store sizes learned from fetched blobs (inode -> size); False if the index was busy.

        Losing the race is harmless: the sizes are learned again when next needed.
        """
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "UPDATE entries SET size = ? WHERE inode = ?",
                    [(s, i) for i, s in sizes.items()],
                )
        except sqlite3.OperationalError:
            return False
        return True
