"""Reading a workspace into a checkpoint: its table, its upper files, its git directory.
Blocking: run it in a thread.

What the capture is of: the overlay's table is read in one read transaction (SQLite WAL: one
commit's view, whatever the writer does meanwhile), then every upper file and git directory
file is read through a descriptor and checked after the read (identity, size, change time):
a file that changed while it was read is read again, a few times, then the capture fails.
That makes each file whole; that the files and the table are of one instant is the caller's
part: the mount worker captures while it holds off every change to the workspace
(``fs/hold.py``), and without a worker nobody changes it. git writes its files by renaming a
whole new one into place, so the git directory's files are each whole; a git command that
runs during a capture may be caught halfway (its lock files, ``*.lock``, are left out), as
with a copy of a ``.git`` made meanwhile.

Files whose identity and times equal what the last capture hashed, and that did not change
within ``state.RACY_NS`` of it, are not read again (their digest is kept in the state); their
bytes are needed only if the tier does not hold them yet. The others are copied into
``staging`` (named by digest) while they are hashed, so that what is sent later is exactly
what was hashed, whatever happens to the workspace after the hold ends.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import sqlite3
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..store import DATABASE, UPPER
from .manifest import BLOB_COLUMNS, FileEntry, Manifest
from .state import RACY_NS, CheckpointState, FileStat

GIT_DIR = "git"
CHUNK = 1 << 20
ATTEMPTS = 5


class CaptureError(Exception):
    """The workspace could not be read into a checkpoint (one line, fit for the user)."""


@dataclass
class Captured:
    manifest: Manifest
    staged: dict[str, Path] = field(default_factory=dict)
    """Digest -> a copy of those bytes in the staging directory."""
    stats: dict[str, FileStat] = field(default_factory=dict)
    started_ns: int = 0


def capture(
    workspace: Path, staging: Path, state: CheckpointState, source: str, ref: str | None
) -> Captured:
    """The workspace's state as a manifest, with the bytes the tier may lack in ``staging``
    (emptied first)."""
    database = workspace / DATABASE
    if not database.is_file():
        raise CaptureError(f"{workspace} holds no workspace (no {DATABASE})")
    _empty(staging)
    started = time.time_ns()
    captured = Captured(manifest=_table(database, source, ref), started_ns=started)
    reader = _Reader(staging, state, captured)
    manifest = captured.manifest
    ino_column = manifest.columns.index("ino")
    content_column = manifest.columns.index("content")
    for row in manifest.nodes:
        if row[content_column] == "upper":
            ino = int(row[ino_column])
            manifest.upper[ino] = reader.file(workspace / UPPER / str(ino), f"upper/{ino}")
    git = workspace / GIT_DIR
    if git.is_dir():
        manifest.git_path = str(git.absolute())
        _git_tree(git, reader, manifest)
        manifest.object_format = _object_format(git)
    return captured


def _table(database: Path, source: str, ref: str | None) -> Manifest:
    db = sqlite3.connect(database, isolation_level=None, timeout=30)
    try:
        db.execute("BEGIN")  # one read transaction: one commit's view of every table
        user_version = int(db.execute("PRAGMA user_version").fetchone()[0])
        cursor = db.execute("SELECT * FROM nodes WHERE parent != 0 ORDER BY ino")
        columns = [str(d[0]) for d in cursor.description]
        nodes = [_row(columns, values) for values in cursor]
        tables = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master")}
        xattrs = []
        if "xattrs" in tables:
            xattrs = [
                (int(ino), bytes(name), bytes(value))
                for ino, name, value in db.execute(
                    "SELECT ino, name, value FROM xattrs ORDER BY ino, name"
                )
            ]
        meta = {str(k): str(v) for k, v in db.execute("SELECT key, value FROM meta")}
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        raise CaptureError(f"cannot read the workspace's table {database}: {exc}") from None
    finally:
        db.close()
    commit = meta.get("base_commit")
    if not commit:
        raise CaptureError("the workspace was never shown over a commit: nothing to checkpoint")
    return Manifest(
        commit=commit,
        object_format="sha1",
        source=source,
        ref=ref,
        user_version=user_version,
        columns=columns,
        nodes=nodes,
        xattrs=xattrs,
        meta={k: v for k, v in meta.items() if k in ("schema", "next_ino", "base_commit")},
        upper={},
        git_path="",
        git_dirs={},
        git_files={},
        git_links={},
    )


def _row(columns: list[str], values: Any) -> list[Any]:
    row = list(values)
    for i, column in enumerate(columns):
        if column in BLOB_COLUMNS and isinstance(row[i], str):
            row[i] = row[i].encode()
        elif isinstance(row[i], bytes | memoryview) and column not in BLOB_COLUMNS:
            raise CaptureError(f"the workspace's table holds bytes in column {column}")
        elif isinstance(row[i], memoryview):
            row[i] = bytes(row[i])
    return row


def _git_tree(git: Path, reader: _Reader, manifest: Manifest) -> None:
    for directory, subdirs, files in os.walk(git):
        here = Path(directory)
        relative = here.relative_to(git).as_posix()
        if relative != ".":
            manifest.git_dirs[relative] = stat.S_IMODE(os.lstat(here).st_mode)
        for name in sorted(subdirs):
            path = here / name
            if path.is_symlink():
                manifest.git_links[_rel(git, path)] = os.readlink(path)
        for name in sorted(files):
            if name.endswith(".lock") or ".tmp-" in name:
                continue  # git's locks, our temporaries: what is half-written
            path = here / name
            if path.is_symlink():
                manifest.git_links[_rel(git, path)] = os.readlink(path)
                continue
            if not path.is_file():  # a FIFO or socket: opening one would hang or fail
                continue
            with contextlib.suppress(FileNotFoundError):  # gone meanwhile: git's own churn
                manifest.git_files[_rel(git, path)] = reader.file(path, f"git/{_rel(git, path)}")


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _object_format(git: Path) -> str:
    try:
        text = (git / "config").read_text(errors="replace")
    except OSError:
        return "sha1"
    return "sha256" if "objectformat = sha256" in text.lower() else "sha1"


class _Reader:
    def __init__(self, staging: Path, state: CheckpointState, captured: Captured) -> None:
        self.staging = staging
        self.state = state
        self.captured = captured

    def file(self, path: Path, key: str) -> FileEntry:
        for _ in range(ATTEMPTS):
            entry = self._attempt(path, key)
            if entry is not None:
                return entry
        raise CaptureError(f"{path} kept changing while it was read; try again")

    def _attempt(self, path: Path, key: str) -> FileEntry | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise CaptureError(f"cannot read {path}: {exc.strerror}") from None
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise CaptureError(f"{path} is not a regular file")
            known = self.state.stats.get(key)
            trusted = (
                known is not None
                and known.same(before)
                and before.st_ctime_ns < self.state.captured_ns - RACY_NS
            )
            digest: str | None
            if trusted and known is not None and known.sha256 in self.state.held:
                digest = known.sha256
            else:
                digest = self._copy(fd, path)
            if digest is None:
                return None
            self.captured.stats[key] = FileStat(
                before.st_dev,
                before.st_ino,
                before.st_size,
                before.st_mtime_ns,
                before.st_ctime_ns,
                digest,
            )
            return FileEntry(
                digest,
                before.st_size,
                stat.S_IMODE(before.st_mode),
                before.st_mtime_ns,
                _xattrs(fd),
            )
        finally:
            os.close(fd)

    def _copy(self, fd: int, path: Path) -> str | None:
        """Copy and hash; None if the file changed meanwhile."""
        before = os.fstat(fd)
        hasher = hashlib.sha256()
        temp = self.staging / f".copy-{secrets.token_hex(6)}"
        try:
            with open(temp, "xb") as out:
                offset = 0
                while chunk := os.pread(fd, CHUNK, offset):
                    hasher.update(chunk)
                    out.write(chunk)
                    offset += len(chunk)
            after = os.fstat(fd)
            if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
                before.st_size,
                before.st_mtime_ns,
                before.st_ctime_ns,
            ) or offset != before.st_size:
                return None
            digest = hasher.hexdigest()
            os.replace(temp, self.staging / digest)
            self.captured.staged[digest] = self.staging / digest
            return digest
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise CaptureError(f"no space left to stage {path} for the checkpoint") from None
            raise CaptureError(f"cannot read {path}: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


def _xattrs(fd: int) -> dict[bytes, bytes]:
    """The ``user.*`` attributes of an upper file (the others are not ours to move)."""
    found: dict[bytes, bytes] = {}
    try:
        names = os.listxattr(fd)
    except OSError:
        return found
    for name in names:
        if name.startswith("user."):
            with contextlib.suppress(OSError):
                found[name.encode()] = os.getxattr(fd, name)
    return found


def _empty(staging: Path) -> None:
    staging.mkdir(mode=0o700, exist_ok=True)
    for entry in os.scandir(staging):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
