"""The overlay store of one workspace: an SQLite table of nodes and a directory of upper files.

A workspace directory holds ``overlay.sqlite`` and ``upper/``. The model is EdenFS's
(node-keyed, *materialized directories*):

- An entry of the snapshot (the *lower* tree) that nobody touched is not in the table: it is
  the snapshot row, with the row's inode number as its inode number.
- A table row overrides the lower row of the same inode number. A directory is *materialized*
  the first time a child is created, removed or renamed into or out of it: every child then has
  a row (pointing to its lower row; O(children) rows, no contents copied) and the directory is
  listed from the table alone. An unmaterialized directory lists its lower children, each
  overridden by its row if it has one (a child copied up or chmod-ed keeps its parent
  unmaterialized).
- Renaming is one row update, whatever is renamed: a lower directory moved elsewhere stays
  unmaterialized and keeps listing its lower children. No content is ever copied by a rename.
- Contents: a file's bytes are its lower blob until it is *copied up* (first write-open,
  truncate or setattr) into ``upper/<ino>``. Upper files are named by inode number, never by
  path, so renames never move them. A copy is written to ``upper/<ino>.tmp``, synced, renamed
  into place, and only then does the row say ``upper``: an upper file the table does not name
  is removed when the store is opened (a crash between the two), never the reverse.
- Owners (``uid``/``gid``, NULL: the mount owner's), modes, the times of nodes without an upper
  file and their xattrs (table ``xattrs``) are rows too: a chown or utime copies nothing.
  FIFOs and sockets are rows without an upper file.
- The schema's version is ``PRAGMA user_version`` (``USER_VERSION``); an older database is
  upgraded in place when opened (``_migrate``).
- Created entries get inode numbers from ``FIRST_CREATED`` up (a persisted counter), a range
  no snapshot row uses, so every inode number is stable across restarts.
- ``parent`` is the directory's inode number; 0 marks a node that was unlinked while the kernel
  still knows it (open files), dropped when the kernel forgets it; -1 marks a removed lower
  entry (its inode must never fall back to the lower row). The root's row has parent 1.

Every change is one transaction that also appends the paths it touched to the change journal
(``journal.py``), so git's fsmonitor hook is never behind. Commits are WAL commits without a
sync (they survive the death of the process, not of the machine); ``sync()`` makes everything
committed durable (the kernel's ``fsync``).

The store is blocking code with no FUSE in it. It keeps two connections: mutations run on the
writer (in one worker thread at a time, which the caller guarantees), and the short indexed
reads a lookup or a listing needs run on the reader, which sees the last commit (WAL).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..durable import fsync_directory
from ..snapshot import ROOT_INODE, Kind, Row, SnapshotIndex
from . import journal

FIRST_CREATED = 1 << 62
"""Inode numbers of created entries start here (snapshot rows are numbered from 1 up)."""
UNLINKED = 0
REMOVED = -1
DATABASE = "overlay.sqlite"
UPPER = "upper"
SCHEMA_VERSION = "1"
PERMISSIONS = 0o7777

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    ino          INTEGER PRIMARY KEY,  -- inode number: the lower row's, or >= FIRST_CREATED
    parent       INTEGER NOT NULL,     -- directory ino; 0 unlinked but known; -1 removed lower
    name         BLOB NOT NULL,
    kind         INTEGER NOT NULL,     -- snapshot.Kind
    mode         INTEGER NOT NULL,     -- permission bits
    lower        INTEGER,              -- the lower row it derives from (NULL: created)
    content      TEXT,                 -- files: 'lower' | 'upper'; NULL otherwise
    target       BLOB,                 -- symlinks
    mtime_ns     INTEGER,              -- all but upper files (theirs: the upper file's)
    ctime_ns     INTEGER,
    materialized INTEGER NOT NULL DEFAULT 0,  -- directories: children are all rows
    changed      INTEGER NOT NULL DEFAULT 0,  -- differs from the lower entry (counted)
    atime_ns     INTEGER,              -- (user_version 2) like mtime_ns; NULL: mtime_ns
    uid          INTEGER,              -- (user_version 2) NULL: the mount owner's
    gid          INTEGER               -- (user_version 2) NULL: the mount owner's
);
CREATE UNIQUE INDEX IF NOT EXISTS nodes_by_name ON nodes (parent, name) WHERE parent > 0;
CREATE INDEX IF NOT EXISTS nodes_by_parent ON nodes (parent, ino);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

USER_VERSION = 2
"""``PRAGMA user_version`` of the database: 0 is the first schema (no ``atime_ns``, ``uid``,
``gid`` columns, no ``xattrs`` table), which ``_migrate`` upgrades in place."""
_ADDED_COLUMNS = ("atime_ns", "uid", "gid")
XATTRS = """
CREATE TABLE IF NOT EXISTS xattrs (
    ino   INTEGER NOT NULL,  -- a node without an upper file (directories, symlinks, FIFOs)
    name  BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ino, name)
);
"""

_COLUMNS = (
    "ino, parent, name, kind, mode, lower, content, target, mtime_ns, ctime_ns, materialized,"
    " atime_ns, uid, gid"
)


class WorkspaceChanged(Exception):
    """The workspace holds changes made over another commit than the one to be shown."""

    def __init__(self, count: int, base: str, wanted: str) -> None:
        super().__init__(
            f"the workspace has {count} changed path{'s' if count != 1 else ''} over commit"
            f" {base[:12]}, not {wanted[:12]}: keep them or discard them first"
        )
        self.count = count
        self.base = base
        self.wanted = wanted


class Refused(Exception):
    """A change the file system semantics refuse; ``errno`` says which answer (fs/ turns it
    into the kernel's errno, like any domain error)."""

    def __init__(self, code: int, what: str = "") -> None:
        super().__init__(what or os.strerror(code))
        self.errno = code


@dataclass(frozen=True, slots=True)
class Node:
    """One entry of the workspace, wherever it comes from."""

    ino: int
    parent: int
    name: bytes
    kind: Kind
    mode: int
    """Permission bits (the type comes from ``kind``)."""
    lower: int | None
    upper: bool
    """Its bytes are in ``upper/<ino>`` (else the lower blob, for files)."""
    target: bytes | None
    mtime_ns: int | None
    ctime_ns: int | None
    materialized: bool
    stored: bool
    """Has a row (else it is an untouched lower entry)."""
    atime_ns: int | None = None
    uid: int | None = None
    """The owner (None: the mount owner, as every lower entry until a chown)."""
    gid: int | None = None
    row: Row | None = field(default=None, compare=False, repr=False)
    """The snapshot row an untouched lower entry was made from (spares looking it up again)."""

    @property
    def is_directory(self) -> bool:
        return self.kind.is_directory

    @property
    def is_file(self) -> bool:
        return self.kind in (Kind.FILE, Kind.EXECUTABLE)

    @property
    def st_mode(self) -> int:
        return stat.S_IFMT(self.kind.st_mode) | self.mode

    @property
    def linked(self) -> bool:
        return self.parent > 0


def _from_row(row: Row) -> Node:
    return Node(
        ino=row.inode,
        parent=row.parent,
        name=row.name,
        kind=row.kind,
        mode=row.kind.st_mode & PERMISSIONS,
        lower=row.inode,
        upper=False,
        target=row.target,
        mtime_ns=None,
        ctime_ns=None,
        materialized=False,
        stored=False,
        row=row,
    )


def _from_values(values: tuple[object, ...]) -> Node:
    ino, parent, name, kind, mode, lower, content, target, mtime, ctime, materialized = values[:11]
    atime, uid, gid = values[11:]
    return Node(
        ino=int(ino),  # type: ignore[call-overload]
        parent=int(parent),  # type: ignore[call-overload]
        name=bytes(name),  # type: ignore[call-overload]
        kind=Kind(kind),  # type: ignore[arg-type]
        mode=int(mode),  # type: ignore[call-overload]
        lower=None if lower is None else int(lower),  # type: ignore[call-overload]
        upper=content == "upper",
        target=None if target is None else bytes(target),  # type: ignore[call-overload]
        mtime_ns=None if mtime is None else int(mtime),  # type: ignore[call-overload]
        ctime_ns=None if ctime is None else int(ctime),  # type: ignore[call-overload]
        materialized=bool(materialized),
        stored=True,
        atime_ns=None if atime is None else int(atime),  # type: ignore[call-overload]
        uid=None if uid is None else int(uid),  # type: ignore[call-overload]
        gid=None if gid is None else int(gid),  # type: ignore[call-overload]
    )


def _now_ns() -> int:
    return time.time_ns()


class Overlay:
    """The overlay of one workspace over one snapshot (``open`` it)."""

    def __init__(self, directory: Path, lower: SnapshotIndex) -> None:
        self.directory = directory
        self.upper_dir = directory / UPPER
        self.database = directory / DATABASE
        self.lower = lower
        self._writer = self._connect()
        self._reader = self._connect()
        self._hook_files = journal.HookFiles(journal.hook_files_of(self.database))

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.database, isolation_level=None, check_same_thread=False, timeout=10
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    # -- opening, rebasing, discarding ----------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, lower: SnapshotIndex) -> Overlay:
        """Open (or create) the overlay in ``directory`` over ``lower``. An overlay made over
        another commit is reset if it holds no change, else ``WorkspaceChanged`` is raised."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (directory / UPPER).mkdir(mode=0o700, exist_ok=True)
        overlay = cls(directory, lower)
        try:
            overlay._prepare()
        except BaseException:
            overlay.close()
            raise
        return overlay

    def _prepare(self) -> None:
        db = self._writer
        db.executescript(SCHEMA)
        self._migrate()
        journal.ensure(db)
        with self._transaction() as db:
            if self._meta(db, "schema") is None:
                self._set_meta(db, "schema", SCHEMA_VERSION)
                self._set_meta(db, "next_ino", str(FIRST_CREATED))
        base = self._meta(db, "base_commit")
        commit = self.lower.meta.commit
        if base is not None and base != commit:
            count = self.changed_paths_count()
            if count:
                raise WorkspaceChanged(count, base, commit)
            self.discard()
        with self._transaction() as db:
            self._set_meta(db, "base_commit", commit)
            # nodes the kernel knew when the last worker ended: it knows none now
            db.execute(
                "UPDATE nodes SET parent = ?, content = NULL"
                " WHERE parent = ? AND lower IS NOT NULL",
                (REMOVED, UNLINKED),
            )
            db.execute("DELETE FROM nodes WHERE parent = ?", (UNLINKED,))
            db.execute(
                "DELETE FROM xattrs WHERE ino NOT IN (SELECT ino FROM nodes WHERE parent != ?)",
                (REMOVED,),
            )
        self._remove_unnamed_upper_files()
        self._hook_files.rebuild(self._writer)

    def _migrate(self) -> None:
        """Bring an older database to ``USER_VERSION`` in one transaction (a newer one is left
        as it is: its extra columns are not ours to drop)."""
        with self._transaction() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version >= USER_VERSION:
                return
            present = {str(column[1]) for column in db.execute("PRAGMA table_info(nodes)")}
            for column in _ADDED_COLUMNS:
                if column not in present:
                    db.execute(f"ALTER TABLE nodes ADD COLUMN {column} INTEGER")
            db.execute(XATTRS.strip().rstrip(";"))
            db.execute(f"PRAGMA user_version = {USER_VERSION}")

    def _remove_unnamed_upper_files(self) -> None:
        named = {
            str(ino)
            for (ino,) in self._writer.execute("SELECT ino FROM nodes WHERE content = 'upper'")
        }
        for entry in os.scandir(self.upper_dir):
            if entry.name not in named:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def rebase(self, lower: SnapshotIndex) -> None:
        """Show ``lower`` from now on: allowed only without changes (then the overlay is
        reset); else ``WorkspaceChanged``."""
        if lower.meta.commit == self.lower.meta.commit:
            self.lower = lower
            return
        count = self.changed_paths_count()
        if count:
            raise WorkspaceChanged(count, self.lower.meta.commit, lower.meta.commit)
        self.discard()
        self.lower = lower
        with self._transaction() as db:
            self._set_meta(db, "base_commit", lower.meta.commit)

    def discard(self) -> None:
        """Forget every change: the table, the upper files, the journal (a new epoch)."""
        with self._transaction() as db:
            # what is reverted is changed too, for whoever holds a token of this epoch; the
            # hook sees the new epoch only once the discard is committed
            reverted = [bytes(row[0]) for row in db.execute("SELECT DISTINCT path FROM journal")]
            self._record(db, reverted)
            db.execute("DELETE FROM nodes")
            db.execute("DELETE FROM xattrs")
            epoch = journal.reset(db)
        self._hook_files.reset(epoch)
        for entry in os.scandir(self.upper_dir):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)

    def close(self) -> None:
        self._hook_files.close()
        self._writer.close()
        self._reader.close()

    @property
    def base_commit(self) -> str:
        return self._meta(self._reader, "base_commit") or self.lower.meta.commit

    def changed_paths_count(self) -> int:
        """Entries that differ from the snapshot: created, modified, renamed, re-moded, or
        removed."""
        found = self._reader.execute(
            "SELECT count(*) FROM nodes WHERE (changed AND parent > 0 AND ino != ?) OR parent = ?",
            (ROOT_INODE, REMOVED),
        ).fetchone()
        return int(found[0])

    def current_token(self) -> str:
        """The fsmonitor token naming now (what the hook would answer)."""
        return self._hook_files.token()

    def _record(self, db: sqlite3.Connection, paths: list[bytes]) -> None:
        """Journal ``paths`` in ``db``'s transaction, and mirror them for the hook first."""
        self._hook_files.append(journal.record(db, paths), paths)

    # -- reading (the reader connection: short indexed queries, on the caller's thread) --------

    def get(self, ino: int, db: sqlite3.Connection | None = None) -> Node | None:
        """The node ``ino`` stands for (an unlinked one included), or None."""
        db = db or self._reader
        values = db.execute(f"SELECT {_COLUMNS} FROM nodes WHERE ino = ?", (ino,)).fetchone()
        if values is not None:
            node = _from_values(values)
            return None if node.parent == REMOVED else node
        if ino >= FIRST_CREATED:
            return None
        row = self.lower.get(ino)
        return _from_row(row) if row is not None else None

    def lower_row(self, node: Node) -> Row | None:
        return self.lower.get(node.lower) if node.lower is not None else None

    def lookup(
        self, parent: Node, name: bytes, db: sqlite3.Connection | None = None
    ) -> Node | None:
        db = db or self._reader
        if parent.materialized:
            values = db.execute(
                f"SELECT {_COLUMNS} FROM nodes WHERE parent = ? AND name = ? AND ino != ?",
                (parent.ino, name, ROOT_INODE),
            ).fetchone()
            return _from_values(values) if values is not None else None
        if parent.lower is None:
            return None
        row = self.lower.lookup(parent.lower, name)
        if row is None:
            return None
        node = self.get(row.inode, db)
        return node if node is not None and node.parent == parent.ino else None

    def children(
        self,
        directory: Node,
        after: int = 0,
        limit: int = 256,
        db: sqlite3.Connection | None = None,
    ) -> list[Node]:
        """Children in inode order, after inode ``after``."""
        db = db or self._reader
        if directory.materialized:
            found = db.execute(
                f"SELECT {_COLUMNS} FROM nodes WHERE parent = ? AND ino > ? AND ino != ?"
                " ORDER BY ino LIMIT ?",
                (directory.ino, after, ROOT_INODE, limit),
            )
            return [_from_values(values) for values in found]
        row = self.lower_row(directory)
        if row is None:
            return []
        rows = self.lower.children(row, after_inode=after, limit=limit)
        if not rows:
            return []
        overrides = {
            values[0]: _from_values(values)
            for values in db.execute(
                f"SELECT {_COLUMNS} FROM nodes WHERE ino BETWEEN ? AND ?",
                (rows[0].inode, rows[-1].inode),
            )
        }
        nodes = []
        for child in rows:
            node = overrides.get(child.inode) or _from_row(child)
            if node.parent == directory.ino:
                nodes.append(node)
        return nodes

    def is_empty(self, directory: Node, db: sqlite3.Connection | None = None) -> bool:
        return not self.children(directory, limit=1, db=db)

    def subdirectories(self, directory: Node) -> int:
        """How many children are directories (a directory's link count is 2 + this)."""
        if directory.materialized:
            found = self._reader.execute(
                "SELECT count(*) FROM nodes WHERE parent = ? AND ino != ? AND kind IN (?, ?)",
                (directory.ino, ROOT_INODE, int(Kind.DIRECTORY), int(Kind.SUBMODULE)),
            ).fetchone()
            return int(found[0])
        row = self.lower_row(directory)
        return row.subdirs if row is not None else 0

    def path_of(self, ino: int, db: sqlite3.Connection | None = None) -> bytes:
        """The path from the mount root (``b""`` for the root)."""
        parts: list[bytes] = []
        node = self.get(ino, db)
        seen = 0
        while node is not None and node.ino != ROOT_INODE and node.parent > 0:
            parts.append(node.name)
            node = self.get(node.parent, db)
            seen += 1
            if seen > 4096:
                raise RuntimeError(f"a cycle above node {ino}")
        return b"/".join(reversed(parts))

    def upper_path(self, ino: int) -> Path:
        return self.upper_dir / str(ino)

    def is_under(self, ino: int, ancestor: int, db: sqlite3.Connection | None = None) -> bool:
        """Whether ``ino`` is ``ancestor`` or below it."""
        node = self.get(ino, db)
        while node is not None:
            if node.ino == ancestor:
                return True
            if node.ino == ROOT_INODE or node.parent <= 0:
                return False
            node = self.get(node.parent, db)
        return False

    # -- changing (the writer connection: one caller thread at a time) --------------------------

    def create(
        self, parent_ino: int, name: bytes, kind: Kind, mode: int, target: bytes | None = None
    ) -> Node:
        """A new file (empty upper file), directory or symlink; ``Refused(EEXIST)`` if the
        name is taken."""
        db = self._writer
        parent = self._directory(parent_ino)
        if self.lookup(parent, name, db) is not None:
            raise Refused(errno.EEXIST)
        now = _now_ns()
        with self._transaction() as db:
            ino = int(self._meta(db, "next_ino") or FIRST_CREATED)
            self._set_meta(db, "next_ino", str(ino + 1))
            if kind.has_blob and kind is not Kind.SYMLINK:
                # the file first: one the table does not name is removed at open
                fd = os.open(
                    self.upper_path(ino),
                    os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_CLOEXEC,
                    0o600,
                )
                os.close(fd)
            self._materialize(db, parent)
            db.execute(
                "INSERT INTO nodes (ino, parent, name, kind, mode, lower, content, target,"
                " mtime_ns, ctime_ns, materialized, changed) VALUES (?,?,?,?,?,NULL,?,?,?,?,?,1)",
                (
                    ino,
                    parent.ino,
                    name,
                    int(kind),
                    mode & PERMISSIONS,
                    "upper" if kind in (Kind.FILE, Kind.EXECUTABLE) else None,
                    target,
                    None if kind in (Kind.FILE, Kind.EXECUTABLE) else now,
                    None if kind in (Kind.FILE, Kind.EXECUTABLE) else now,
                    1 if kind.is_directory else 0,
                ),
            )
            self._touch(db, parent.ino, now)
            self._record(db, [self._join(db, parent.ino, name)])
        node = self.get(ino, db)
        assert node is not None
        return node

    def remove(
        self, parent_ino: int, name: bytes, directory: bool, known: Callable[[int], bool]
    ) -> Node:
        """unlink (``directory`` False) or rmdir; ``known``: the kernel still knows the node
        (it stays, unlinked, until ``forgotten``)."""
        db = self._writer
        parent = self._directory(parent_ino)
        node = self.lookup(parent, name, db)
        if node is None:
            raise Refused(errno.ENOENT)
        if directory and not node.is_directory:
            raise Refused(errno.ENOTDIR)
        if not directory and node.is_directory:
            raise Refused(errno.EISDIR)
        if directory and not self.is_empty(node, db):
            raise Refused(errno.ENOTEMPTY)
        now = _now_ns()
        path = self._join(db, parent.ino, name)
        with self._transaction() as db:
            self._materialize(db, parent)
            self._unlink(db, node.ino, known(node.ino))
            self._touch(db, parent.ino, now)
            self._record(db, [path, path + b"/"] if directory else [path])
        self._remove_upper_if_dropped(node.ino)
        return node

    def rename(
        self,
        old_parent: int,
        old_name: bytes,
        new_parent: int,
        new_name: bytes,
        noreplace: bool,
        exchange: bool,
        known: Callable[[int], bool],
    ) -> Node | None:
        """rename(2) with its flags. ``known``: nodes the kernel still holds (a replaced target
        among them stays, unlinked, until forgotten). Returns the replaced node, if any."""
        db = self._writer
        source_dir = self._directory(old_parent)
        target_dir = self._directory(new_parent)
        source = self.lookup(source_dir, old_name, db)
        if source is None:
            raise Refused(errno.ENOENT)
        target = self.lookup(target_dir, new_name, db)
        if exchange and target is None:
            raise Refused(errno.ENOENT)
        if noreplace and target is not None:
            raise Refused(errno.EEXIST)
        if source.is_directory and self.is_under(new_parent, source.ino, db):
            raise Refused(errno.EINVAL)
        if exchange:
            assert target is not None
            if target.is_directory and self.is_under(old_parent, target.ino, db):
                raise Refused(errno.EINVAL)
        elif target is not None:
            if target.ino == source.ino:
                return None  # the same entry: nothing to do
            if source.is_directory and not target.is_directory:
                raise Refused(errno.ENOTDIR)
            if not source.is_directory and target.is_directory:
                raise Refused(errno.EISDIR)
            if target.is_directory and not self.is_empty(target, db):
                raise Refused(errno.ENOTEMPTY)
        now = _now_ns()
        old_path = self._join(db, old_parent, old_name)
        new_path = self._join(db, new_parent, new_name)
        with self._transaction() as db:
            self._materialize(db, source_dir)
            if new_parent != old_parent:
                self._materialize(db, target_dir)
            if exchange:
                assert target is not None
                db.execute(
                    "UPDATE nodes SET parent = ?, name = ? WHERE ino = ?", (-2, b"", source.ino)
                )
                self._move(db, target.ino, old_parent, old_name, now)
                self._move(db, source.ino, new_parent, new_name, now)
            else:
                if target is not None:
                    self._unlink(db, target.ino, known(target.ino))
                self._move(db, source.ino, new_parent, new_name, now)
            self._touch(db, old_parent, now)
            self._touch(db, new_parent, now)
            paths = [old_path, new_path]
            if source.is_directory or (exchange and target is not None and target.is_directory):
                paths += [old_path + b"/", new_path + b"/"]
            self._record(db, paths)
        if target is not None and not exchange:
            self._remove_upper_if_dropped(target.ino)
            return target
        return None

    def forgotten(self, ino: int) -> None:
        """The kernel forgot ``ino`` and no handle of it is open: an unlinked node goes."""
        node = self.get(ino, self._writer)
        if node is None or node.parent != UNLINKED:
            return
        with self._transaction() as db:
            self._drop(db, node)
        self._remove_upper_if_dropped(ino)

    def set_mode(self, ino: int, mode: int) -> Node:
        now = _now_ns()
        with self._transaction() as db:
            node = self._stored(db, ino)
            db.execute(
                "UPDATE nodes SET mode = ?, changed = 1, ctime_ns = ? WHERE ino = ?",
                (mode & PERMISSIONS, now, ino),
            )
            self._record(db, [self.path_of(ino, db)])
        found = self.get(node.ino, self._writer)
        assert found is not None
        return found

    def set_times(self, ino: int, atime_ns: int | None, mtime_ns: int | None) -> Node:
        """The access and modification times of a node without an upper file (directories,
        symlinks, FIFOs; files keep theirs in the upper file); None leaves one as it is. The
        change time becomes now."""
        now = _now_ns()
        with self._transaction() as db:
            node = self._stored(db, ino)
            db.execute(
                "UPDATE nodes SET atime_ns = ?, mtime_ns = ?, ctime_ns = ?, changed = 1"
                " WHERE ino = ?",
                (
                    atime_ns if atime_ns is not None else node.atime_ns or node.mtime_ns,
                    mtime_ns if mtime_ns is not None else node.mtime_ns,
                    now,
                    ino,
                ),
            )
            self._record(db, [self.path_of(ino, db)])
        found = self.get(ino, self._writer)
        assert found is not None
        return found

    def set_owner(self, ino: int, uid: int | None, gid: int | None) -> Node:
        """chown(2): the owner and group (None leaves one as it is) are kept in the node's row;
        no content is copied. The change time becomes now."""
        now = _now_ns()
        with self._transaction() as db:
            node = self._stored(db, ino)
            db.execute(
                "UPDATE nodes SET uid = ?, gid = ?, ctime_ns = ?, changed = 1 WHERE ino = ?",
                (
                    uid if uid is not None else node.uid,
                    gid if gid is not None else node.gid,
                    now,
                    ino,
                ),
            )
            self._record(db, [self.path_of(ino, db)])
        found = self.get(ino, self._writer)
        assert found is not None
        return found

    # -- extended attributes of nodes without an upper file ------------------------------------

    def xattr(self, ino: int, name: bytes) -> bytes | None:
        found = self._reader.execute(
            "SELECT value FROM xattrs WHERE ino = ? AND name = ?", (ino, name)
        ).fetchone()
        return None if found is None else bytes(found[0])

    def xattr_names(self, ino: int) -> list[bytes]:
        found = self._reader.execute("SELECT name FROM xattrs WHERE ino = ? ORDER BY name", (ino,))
        return [bytes(name) for (name,) in found]

    def set_xattr(self, ino: int, name: bytes, value: bytes) -> None:
        """setxattr(2) on a node without an upper file."""
        now = _now_ns()
        with self._transaction() as db:
            self._stored(db, ino)
            db.execute(
                "INSERT OR REPLACE INTO xattrs (ino, name, value) VALUES (?, ?, ?)",
                (ino, name, value),
            )
            db.execute("UPDATE nodes SET ctime_ns = ?, changed = 1 WHERE ino = ?", (now, ino))
            self._record(db, [self.path_of(ino, db)])

    def remove_xattr(self, ino: int, name: bytes) -> None:
        """removexattr(2) on a node without an upper file: ENODATA if not set."""
        now = _now_ns()
        with self._transaction() as db:
            found = db.execute("DELETE FROM xattrs WHERE ino = ? AND name = ?", (ino, name))
            if found.rowcount == 0:
                raise Refused(errno.ENODATA)
            self._stored(db, ino)
            db.execute("UPDATE nodes SET ctime_ns = ?, changed = 1 WHERE ino = ?", (now, ino))
            self._record(db, [self.path_of(ino, db)])

    def modified(self, ino: int) -> None:
        """An upper file's bytes changed (recorded for the journal)."""
        with self._transaction() as db:
            db.execute("UPDATE nodes SET changed = 1 WHERE ino = ?", (ino,))
            self._record(db, [self.path_of(ino, db)])

    def staging_path(self, ino: int) -> Path:
        """Where a copy-up writes before ``copied_up``."""
        return self.upper_dir / f"{ino}.tmp"

    def copied_up(self, ino: int) -> Node:
        """``staging_path(ino)`` holds the whole synced copy of a lower file: publish it as
        the node's upper file, then (only then) say so in the table."""
        staging = self.staging_path(ino)
        os.rename(staging, self.upper_path(ino))
        fsync_directory(self.upper_dir)
        with self._transaction() as db:
            self._stored(db, ino)
            db.execute("UPDATE nodes SET content = 'upper', changed = 1 WHERE ino = ?", (ino,))
            self._record(db, [self.path_of(ino, db)])
        node = self.get(ino, self._writer)
        assert node is not None
        return node

    def sync(self) -> None:
        """Make everything committed so far durable (the database's log and the upper
        directory's names)."""
        for path in (self.database.with_name(DATABASE + "-wal"), self.database):
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_directory(self.upper_dir)

    # -- internals ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._writer
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @staticmethod
    def _meta(db: sqlite3.Connection, key: str) -> str | None:
        found = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if found is None else str(found[0])

    @staticmethod
    def _set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _directory(self, ino: int) -> Node:
        node = self.get(ino, self._writer)
        if node is None:
            raise Refused(errno.ENOENT)
        if not node.is_directory:
            raise Refused(errno.ENOTDIR)
        if not node.linked and node.ino != ROOT_INODE:
            raise Refused(errno.ENOENT)  # a removed directory takes no new entries
        return node

    def _join(self, db: sqlite3.Connection, parent: int, name: bytes) -> bytes:
        above = self.path_of(parent, db)
        return above + b"/" + name if above else name

    def _insert_lower(self, db: sqlite3.Connection, node: Node) -> None:
        db.execute(
            "INSERT OR IGNORE INTO nodes (ino, parent, name, kind, mode, lower, content, target)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                node.ino,
                node.parent,
                node.name,
                int(node.kind),
                node.mode,
                node.lower,
                "lower" if node.is_file else None,
                node.target,
            ),
        )

    def _stored(self, db: sqlite3.Connection, ino: int) -> Node:
        """The node, given a row if it had none."""
        node = self.get(ino, db)
        if node is None:
            raise Refused(errno.ENOENT)
        if not node.stored:
            self._insert_lower(db, node)
        return node

    def _materialize(self, db: sqlite3.Connection, directory: Node) -> None:
        """Give the directory and each of its children a row (no contents are copied)."""
        current = self.get(directory.ino, db)
        if current is None or current.materialized:
            return
        if not current.stored:
            self._insert_lower(db, current)
        row = self.lower_row(current)
        if row is not None and row.child_count:
            for child in self.lower.children(row, limit=row.child_count):
                self._insert_lower(db, _from_row(child))
        db.execute("UPDATE nodes SET materialized = 1 WHERE ino = ?", (current.ino,))

    def _touch(self, db: sqlite3.Connection, directory: int, now: int) -> None:
        """A directory's entries changed: its times become now."""
        self._stored(db, directory)
        db.execute(
            "UPDATE nodes SET mtime_ns = ?, ctime_ns = ? WHERE ino = ?", (now, now, directory)
        )

    def _move(self, db: sqlite3.Connection, ino: int, parent: int, name: bytes, now: int) -> None:
        db.execute(
            "UPDATE nodes SET parent = ?, name = ?, changed = 1, ctime_ns = ? WHERE ino = ?",
            (parent, name, now, ino),
        )

    def _unlink(self, db: sqlite3.Connection, ino: int, known: bool) -> None:
        node = self._stored(db, ino)
        if known:
            db.execute("UPDATE nodes SET parent = ? WHERE ino = ?", (UNLINKED, ino))
        else:
            self._drop(db, node)

    def _drop(self, db: sqlite3.Connection, node: Node) -> None:
        db.execute("DELETE FROM xattrs WHERE ino = ?", (node.ino,))
        if node.lower is not None:  # its inode must never show the lower row again
            db.execute(
                "UPDATE nodes SET parent = ?, content = NULL WHERE ino = ?", (REMOVED, node.ino)
            )
        else:
            db.execute("DELETE FROM nodes WHERE ino = ?", (node.ino,))

    def _remove_upper_if_dropped(self, ino: int) -> None:
        """After the commit that dropped a node: its upper file goes (a crash before this
        leaves a file the table does not name, removed at the next open)."""
        found = self._writer.execute(
            "SELECT parent, content FROM nodes WHERE ino = ?", (ino,)
        ).fetchone()
        if found is None or found[0] == REMOVED:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.upper_path(ino))
