"""Materialising a snapshot (or some of its paths) into a real, writable directory:
``artifactfs clone``'s disk side. Blocking code: run it in a thread.

Safety, after mlx-knife's clone:

- The tree is built in a temporary sibling of DEST, ``.<DEST name>.artifactfs-clone/``,
  which holds our sentinel (``artifactfs-clone.json``: what is being cloned), a log of the
  entries finished (``done``) and the tree itself (``tree/``). The sibling only ever appears
  whole with its sentinel: it is made under another name and renamed into place.
- An interrupted clone (``kill -9``, a lost origin) leaves the sibling; the same clone run
  again takes it up: the entries its log lists are kept, the others made again. A clone of
  something else into the same DEST removes it first (it is ours: it carries the sentinel).
- A running clone holds an ``flock`` on its sentinel: a second clone into the same DEST is
  refused while it runs.
- Publishing is one ``rename`` of ``tree/`` to DEST, which must be absent or an empty
  directory: a non-empty DEST (or a file) is never touched, and the rename itself refuses a
  DEST that became non-empty meanwhile. Before it the file system is synced once, so a DEST
  that exists after a crash is whole.
- Only directories carrying our sentinel (or empty ones we name) are ever removed.

Entries are created beneath directory descriptors opened with ``O_NOFOLLOW``, never through a
path that could cross a symlink; files with ``O_CREAT | O_EXCL | O_NOFOLLOW``; symlinks as
symlinks. Names come from a snapshot (validated when it was written: no ``..``, ``/``, NUL).

What is made: ``plan`` lists a snapshot's entries (or some paths' and the directories above
them); ``plan_workspace`` a workspace's, its changes included (the overlay's table read in one
transaction; a changed file's bytes are its upper file's).

File contents come from verified CAS files by ``copyup``'s reflink, else
``copy_file_range``, else read/write (``TreeWriter.file``). The clone (cli/clone_command.py)
checks each file against its digest before publishing: a copy by hashing the copy; a reflink
by hashing the CAS file through the very descriptor it was cloned from (the clone shares
those extents, and a CAS file is never written in place), unless the blob was fetched by this
clone (and so hashed as it was published, moments ago) or the cache is trusted
(``--trust-cache``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import os
import secrets
import shutil
import sqlite3
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cas import Digest
from ..durable import fsync_directory, syncfs
from ..errors import UserError
from ..snapshot import ROOT_INODE, Kind, Row, SnapshotIndex
from ..snapshot.entries import check_name
from .copyup import clone_or_copy

SUFFIX = ".artifactfs-clone"
SENTINEL = "artifactfs-clone.json"
DONE = "done"
TREE = "tree"
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Planned:
    """One entry to make in the clone."""

    key: str
    """Stable within what is cloned (the done log's name for it)."""
    path: bytes
    """Relative to the clone's root, components joined by ``/``."""
    kind: Kind
    mode: int
    """Permission bits (the umask is applied when it is made)."""
    size: int | None = None
    target: bytes | None = None
    row: Row | None = None
    """The snapshot row a file's content is fetched for (None: ``local`` holds it)."""
    digest: Digest | None = None
    local: Path | None = None
    """A local file whose bytes are the entry's (a workspace's changed file)."""

    @property
    def always_redo(self) -> bool:
        """A workspace's changed file may change again: a resumed clone copies it anew."""
        return self.local is not None


def plan(snapshot: SnapshotIndex, paths: Iterable[str] = ()) -> list[Planned]:
    """Every entry at or below ``paths`` (all of the tree if none), with the directories
    above them; directories before what they hold. Raises ``UserError`` for a path the
    snapshot does not have."""
    wanted = [p.strip("/") for p in paths] or [""]
    found: dict[int, Planned] = {}
    for text in wanted:
        row = _lookup(snapshot, text)
        # the directories above it
        ancestors: list[Row] = []
        parent = snapshot.get(row.parent)
        while parent is not None and parent.inode != ROOT_INODE:
            ancestors.append(parent)
            parent = snapshot.get(parent.parent)
        for ancestor in reversed(ancestors):
            if ancestor.inode not in found:
                found[ancestor.inode] = _planned(
                    snapshot, ancestor, snapshot.path_of(ancestor.inode)
                )
        for below, path in _walk(snapshot, row, os.fsencode(text)):
            if below.inode not in found:
                found[below.inode] = _planned(snapshot, below, path)
    return [found[inode] for inode in sorted(found)]  # breadth-first: parents first


def _lookup(snapshot: SnapshotIndex, text: str) -> Row:
    row = snapshot.get(ROOT_INODE)
    for part in text.split("/") if text else []:
        name = os.fsencode(part)
        try:
            check_name(name)
        except ValueError:
            row = None
        if row is None or not row.kind.is_directory:
            row = None
            break
        row = snapshot.lookup(row.inode, name)
    if row is None:
        raise UserError(f"the snapshot has no path {text!r}")
    return row


def _walk(snapshot: SnapshotIndex, top: Row, top_path: bytes) -> Iterator[tuple[Row, bytes]]:
    """``top`` (unless the root) and everything below it, with their paths."""
    if top.inode != ROOT_INODE:
        yield top, top_path
    pending = [(top, top_path)]
    while pending:
        directory, at = pending.pop()
        if directory.kind is not Kind.DIRECTORY:
            continue
        after = 0
        while children := snapshot.children(directory, after_inode=after):
            for child in children:
                path = at + b"/" + child.name if at else child.name
                yield child, path
                pending.append((child, path))
            after = children[-1].inode


def _planned(snapshot: SnapshotIndex, row: Row, path: bytes) -> Planned:
    mode = row.kind.st_mode & 0o777
    digest = snapshot.digest_of(row) if row.kind in (Kind.FILE, Kind.EXECUTABLE) else None
    return Planned(f"r{row.inode}", path, row.kind, mode, row.size, row.target, row, digest)


# -- the temporary sibling ----------------------------------------------------------------------


def check_dest(text: str) -> Path:
    """DEST as an absolute path, if a clone may be published there: absent (with a parent
    directory) or an empty directory. ``UserError`` otherwise; nothing is touched."""
    dest = Path(os.path.abspath(text))
    if dest.name in ("", ".", ".."):
        raise UserError(f"cannot clone into {text!r}")
    try:
        info = os.lstat(dest)
    except FileNotFoundError:
        parent = dest.parent
        if not parent.is_dir():
            raise UserError(f"{parent} is not a directory") from None
        return dest
    except OSError as exc:
        raise UserError(f"cannot use {dest}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise UserError(f"{dest} is a symbolic link: name a directory that is empty or absent")
    if not stat.S_ISDIR(info.st_mode):
        raise UserError(f"{dest} exists and is not a directory")
    try:
        empty = not os.listdir(dest)
    except OSError as exc:
        raise UserError(f"cannot use {dest}: {exc.strerror}") from None
    if not empty:
        raise UserError(f"{dest} exists and is not empty: refusing to clone into it")
    return dest


def temporary_of(dest: Path) -> Path:
    return dest.parent / f".{dest.name}{SUFFIX}"


def sweep_published(dest: Path) -> bool:
    """Remove the sibling a clone left when it was killed between publishing DEST and removing
    the sibling: ours (the sentinel), idle (unlocked), and without a tree. True if it went."""
    sibling = temporary_of(dest)
    if not os.path.isdir(sibling) or os.path.islink(sibling) or os.path.lexists(sibling / TREE):
        return False
    try:
        lock = _lock_sentinel(sibling)
    except UserError:
        return False  # a clone is working there
    if lock is None:
        return False
    try:
        shutil.rmtree(sibling)
    finally:
        os.close(lock[0])
    return True


class CloneDir:
    """The temporary sibling of one clone, held (locked) while the clone runs."""

    def __init__(self, dest: Path, identity: dict[str, Any]) -> None:
        self.dest = dest
        self.identity = identity
        self.path = temporary_of(dest)
        self.tree = self.path / TREE
        self.resumed = False
        self.removed_stale = False
        """A sibling of another clone (another commit or paths) was removed first."""
        self._lock_fd = -1
        self._done: set[str] = set()
        self._done_fd = -1

    # opening

    def open(self) -> None:
        """Take up the sibling left by the same clone, or make a new one. Raises
        ``UserError`` when another clone into DEST is running or the sibling's name is held
        by something that is not ours."""
        _remove_abandoned_new(self.path)
        while True:
            found = self._take_existing()
            if found:
                break
            if self._make_new():
                break
        self._done_fd = os.open(
            self.path / DONE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
        )

    def _take_existing(self) -> bool:
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(info.st_mode):
            raise UserError(f"{self.path} exists and is not ours: remove it or choose another DEST")
        lock = _lock_sentinel(self.path)
        if lock is None:
            with contextlib.suppress(OSError):
                os.rmdir(self.path)  # empty: what a crash while removing it leaves
                return False
            raise UserError(
                f"{self.path} exists and is not an unfinished artifactfs clone: remove it or"
                " choose another DEST"
            )
        fd, identity = lock
        if identity == self.identity and os.path.isdir(self.tree):
            self._lock_fd = fd
            self.resumed = True
            self._done = _read_done(self.path / DONE)
            return True
        shutil.rmtree(self.path)  # ours, of another clone (or already published): start over
        os.close(fd)
        self.removed_stale = True
        return False

    def _make_new(self) -> bool:
        new = self.path.with_name(f"{self.path.name}.new-{os.getpid()}-{secrets.token_hex(4)}")
        os.mkdir(new, 0o700)
        fd = -1
        try:
            fd = _write_sentinel(new, self.identity)
            os.mkdir(new / TREE, 0o777)  # the umask applies: it becomes DEST
            try:
                os.rename(new, self.path)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                shutil.rmtree(new)
                os.close(fd)
                return False  # someone else's appeared: look at it again
        except BaseException:
            if fd >= 0:
                os.close(fd)
            shutil.rmtree(new, ignore_errors=True)
            raise
        self._lock_fd = fd
        return True

    # progress

    def is_done(self, key: str) -> bool:
        return key in self._done

    def mark_done(self, keys: Iterable[str]) -> None:
        """Record finished entries, once their bytes are on disk (a sync of the file system
        first: the log never names a file whose data a crash could lose)."""
        keys = [k for k in keys if k not in self._done]
        if not keys:
            return
        syncfs(self.path)
        os.write(self._done_fd, "".join(f"{k}\n" for k in keys).encode())
        os.fsync(self._done_fd)
        self._done.update(keys)

    # the end

    def publish(self) -> None:
        """Sync, then rename the tree to DEST (absent or empty) in one step, then remove the
        sibling. ``UserError`` if DEST was filled meanwhile (the tree stays for a retry)."""
        syncfs(self.path)
        try:
            os.rename(self.tree, self.dest)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise UserError(
                    f"{self.dest} was created meanwhile: refusing to replace it (the clone is"
                    f" kept in {self.path})"
                ) from None
            raise
        fsync_directory(self.dest.parent)
        self.remove()

    def remove(self) -> None:
        """Remove the sibling (the sentinel last but for the directory)."""
        if self._done_fd >= 0:
            os.close(self._done_fd)
            self._done_fd = -1
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.tree)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path / DONE)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path / SENTINEL)
        self.close()
        with contextlib.suppress(OSError):
            os.rmdir(self.path)

    def close(self) -> None:
        """Let go (the sibling stays, for a later run to resume)."""
        if self._done_fd >= 0:
            os.close(self._done_fd)
            self._done_fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _write_sentinel(directory: Path, identity: dict[str, Any]) -> int:
    """Write the sentinel and return its descriptor, locked."""
    body = json.dumps({"artifactfs-clone": 1, **identity}, sort_keys=True).encode()
    fd = os.open(
        directory / SENTINEL, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
        0o600,
    )  # fmt: skip
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, body)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock_sentinel(directory: Path) -> tuple[int, dict[str, Any] | None] | None:
    """Lock the sentinel of ``directory``: its descriptor and what it says (None if it cannot
    be read); None if there is no sentinel. ``UserError`` if another clone holds it."""
    try:
        fd = os.open(directory / SENTINEL, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"another artifactfs clone is working in {directory}") from None
    try:
        body = json.loads(os.pread(fd, 1 << 16, 0))
        identity = {k: v for k, v in body.items() if k != "artifactfs-clone"}
    except ValueError:
        identity = None
    return fd, identity


def _remove_abandoned_new(path: Path) -> None:
    """Remove half-made siblings (``.new-*``) that a killed clone left, if they are ours and
    nobody holds them."""
    for candidate in path.parent.glob(f"{glob.escape(path.name)}.new-*"):
        try:
            lock = _lock_sentinel(candidate)
        except UserError:
            continue  # being made right now
        if lock is not None:
            shutil.rmtree(candidate, ignore_errors=True)
            os.close(lock[0])
        else:
            with contextlib.suppress(OSError):
                os.rmdir(candidate)


def _read_done(path: Path) -> set[str]:
    try:
        text = path.read_bytes().decode("ascii", "replace")
    except FileNotFoundError:
        return set()
    lines = text.split("\n")
    return set(lines[:-1])  # the last is empty, or cut short by a crash


# -- making entries -----------------------------------------------------------------------------


class TreeWriter:
    """Makes entries beneath the clone's tree through directory descriptors (no symlink is
    ever followed), keeping the last directory open (a snapshot lists a directory's
    entries together)."""

    def __init__(self, root: Path) -> None:
        self._root = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
        self._umask = _current_umask()
        self._cached: tuple[bytes, int] | None = None

    def close(self) -> None:
        self._drop_cached()
        os.close(self._root)

    def _drop_cached(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def _directory(self, path: bytes) -> int:
        """A descriptor of the directory ``path`` (made already)."""
        if not path:
            return self._root
        if self._cached is not None and self._cached[0] == path:
            return self._cached[1]
        fd = os.dup(self._root)
        try:
            for part in path.split(b"/"):
                following = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
                os.close(fd)
                fd = following
        except BaseException:
            os.close(fd)
            raise
        self._drop_cached()
        self._cached = (path, fd)
        return fd

    def _split(self, path: bytes) -> tuple[int, bytes]:
        parent, _, name = path.rpartition(b"/")
        return self._directory(parent), name

    def directory(self, entry: Planned) -> None:
        parent, name = self._split(entry.path)
        try:
            os.mkdir(name, entry.mode & ~self._umask, dir_fd=parent)
        except FileExistsError:
            info = os.lstat(name, dir_fd=parent)
            if not stat.S_ISDIR(info.st_mode):  # a resumed clone's: made again
                os.unlink(name, dir_fd=parent)
                os.mkdir(name, entry.mode & ~self._umask, dir_fd=parent)

    def symlink(self, entry: Planned) -> None:
        assert entry.target is not None
        parent, name = self._split(entry.path)
        self._remove(parent, name)
        os.symlink(entry.target, name, dir_fd=parent)

    def fifo(self, entry: Planned) -> None:
        parent, name = self._split(entry.path)
        self._remove(parent, name)
        os.mkfifo(name, entry.mode & ~self._umask, dir_fd=parent)

    def empty_file(self, entry: Planned, mtime_ns: int | None) -> None:
        parent, name = self._split(entry.path)
        self._remove(parent, name)
        fd = self._create(parent, name, entry)
        try:
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)

    def file(
        self, entry: Planned, source_fd: int, size: int, mtime_ns: int | None
    ) -> tuple[str, int]:
        """A new file holding ``size`` bytes of ``source_fd``: how it was made, and a
        descriptor of it (read-write; the caller closes it)."""
        parent, name = self._split(entry.path)
        self._remove(parent, name)
        fd = self._create(parent, name, entry)
        try:
            how = clone_or_copy(source_fd, fd, size)
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
        except BaseException:
            os.close(fd)
            raise
        return how, fd

    def _create(self, parent: int, name: bytes, entry: Planned) -> int:
        return os.open(
            name,
            os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            entry.mode & ~self._umask,
            dir_fd=parent,
        )

    @staticmethod
    def _remove(parent: int, name: bytes) -> None:
        """What a resumed clone left under this name (a file not in the done log)."""
        try:
            info = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "a directory where a file goes", name)
        os.unlink(name, dir_fd=parent)


def hashes_to(fd: int, digest: Digest, size: int) -> bool:
    """Whether ``size`` bytes of ``fd`` (and no more) hash to ``digest``."""
    if os.fstat(fd).st_size != size:
        return False
    hasher = digest.algorithm.new_hasher(size)
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(HASH_CHUNK, size - offset), offset)
        if not chunk:
            return False
        hasher.update(chunk)
        offset += len(chunk)
    return hasher.hexdigest() == digest.hex


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# -- a workspace: the snapshot with its changes -------------------------------------------------


def plan_workspace(
    directory: Path, snapshot: SnapshotIndex, paths: Iterable[str] = ()
) -> tuple[list[Planned], str]:
    """``plan`` of a workspace (its overlay in ``directory`` over ``snapshot``): the tree as
    the mount shows it, changes included, read in one transaction of the overlay's table (a
    consistent view even while its worker writes). A changed file's bytes are its upper
    file's as the clone copies them. Also a note for the summary (the changes included)."""
    from .store import DATABASE, Overlay

    if not (directory / DATABASE).exists():
        return plan(snapshot, paths), ""
    overlay = Overlay(directory, snapshot)
    reader = sqlite3.connect(directory / DATABASE, isolation_level=None, timeout=10)
    try:
        reader.execute("BEGIN")
        base = overlay._meta(reader, "base_commit")
        if base is not None and base != snapshot.meta.commit:
            raise UserError(
                f"the workspace is over commit {base[:12]}, not {snapshot.meta.commit[:12]}"
            )
        changed = int(
            reader.execute(
                "SELECT count(*) FROM nodes WHERE (changed AND parent > 0 AND ino != ?)"
                " OR parent = ?",
                (ROOT_INODE, -1),
            ).fetchone()[0]
        )
        entries = _workspace_entries(overlay, reader, snapshot, paths)
        reader.execute("COMMIT")
    finally:
        reader.close()
        overlay.close()
    note = f"; with the workspace's {changed} changed path(s)" if changed else ""
    return entries, note


def workspace_token(directory: Path) -> str | None:
    """Where the workspace's change journal is: a clone resumed after a change starts over."""
    from . import journal
    from .store import DATABASE

    if not (directory / DATABASE).exists():
        return None
    reader = sqlite3.connect(directory / DATABASE, timeout=10)
    try:
        last = reader.execute("SELECT coalesce(max(seq), 0) FROM journal").fetchone()[0]
        return f"{journal.epoch_of(reader)}:{last}"  # every change appends to the journal
    finally:
        reader.close()


def _workspace_entries(
    overlay: Any, db: sqlite3.Connection, snapshot: SnapshotIndex, paths: Iterable[str]
) -> list[Planned]:
    root = overlay.get(ROOT_INODE, db)
    wanted = [p.strip("/") for p in paths] or [""]
    found: dict[int, Planned] = {}
    order: list[int] = []

    def add(node: Any, path: bytes) -> None:
        if node.ino in found or node.ino == ROOT_INODE:
            return
        order.append(node.ino)
        found[node.ino] = _planned_node(overlay, snapshot, node, path)

    for text in wanted:
        node, path = root, b""
        for part in text.split("/") if text else []:
            name = os.fsencode(part)
            child = overlay.lookup(node, name, db) if node.is_directory else None
            if child is None:
                raise UserError(f"the workspace has no path {text!r}")
            node, path = child, (path + b"/" + name if path else name)
            add(node, path)
        pending = [(node, path)]
        while pending:
            directory, at = pending.pop(0)
            if directory.kind is not Kind.DIRECTORY:
                continue
            after = 0
            while children := overlay.children(directory, after=after, db=db):
                for child in children:
                    child_path = at + b"/" + child.name if at else child.name
                    add(child, child_path)
                    pending.append((child, child_path))
                after = children[-1].ino
    return [found[ino] for ino in order]


def _planned_node(overlay: Any, snapshot: SnapshotIndex, node: Any, path: bytes) -> Planned:
    key = f"w{node.ino}"
    mode = node.mode & 0o777
    if node.kind in (Kind.FILE, Kind.EXECUTABLE):
        if node.upper:
            return Planned(key, path, node.kind, mode, local=overlay.upper_path(node.ino))
        row = overlay.lower_row(node)
        if row is None:
            raise UserError(f"the workspace's {path.decode(errors='replace')!r} has no content")
        return Planned(key, path, node.kind, mode, row.size, None, row, snapshot.digest_of(row))
    return Planned(key, path, node.kind, mode, target=node.target)
