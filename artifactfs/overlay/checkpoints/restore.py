"""Bringing a checkpoint back: the pointer, the manifest and every blob downloaded and
verified, then a whole workspace directory built from them. Blocking.

Nothing from the tier is trusted: the manifest must hash to the digest its pointer names and
parse (``manifest.parse`` checks every field), and every blob must hash to its digest, before
anything is written. The workspace is built in a directory of its own (``build``) that the
caller renames into place at the end, so a failure leaves nothing half-written where a
workspace is looked for.

The git directory comes back as it was, with one change: its ``config`` names the git
directory by absolute path (git's fsmonitor hook, the CAS promisor remote), so the old path
is replaced by the new one there; the scripts themselves are rewritten by the worktree's
``attach`` when the mount shows the commit (the home moved).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ...cas.digests import SHA256, Digest
from ...tier.keys import blob_key, checkpoint_key
from ...tier.objects import ObjectStore
from .. import journal
from ..store import DATABASE, SCHEMA, UPPER, USER_VERSION, XATTRS
from . import RESTORED_MARKER
from .capture import GIT_DIR
from .manifest import BadManifest, FileEntry, Manifest, Pointer, parse, parse_pointer

CHUNK = 1 << 20


class RestoreError(Exception):
    """The checkpoint could not be brought back (one line, fit for the user)."""


@dataclass
class Fetched:
    ref: str
    etag: str
    pointer: Pointer
    manifest: Manifest
    blobs: dict[str, Path]


def fetch(store: ObjectStore, ref: str, into: Path) -> Fetched:
    """Download and verify the checkpoint ``ref``: its manifest and every blob (into
    ``into``, named by digest)."""
    got = store.get(checkpoint_key(ref))
    if got is None:
        raise RestoreError(f"there is no checkpoint named {ref} in {store.description}")
    data, etag = got
    try:
        pointer = parse_pointer(data)
        manifest_data = _manifest_bytes(store, pointer.manifest)
        manifest = parse(manifest_data)
    except BadManifest as exc:
        raise RestoreError(f"checkpoint {ref} is damaged: {exc}") from None
    into.mkdir(mode=0o700, parents=True, exist_ok=True)
    blobs = {digest: _download(store, digest, into) for digest in sorted(manifest.digests())}
    return Fetched(ref, etag, pointer, manifest, blobs)


def _manifest_bytes(store: ObjectStore, digest: str) -> bytes:
    got = store.get(blob_key(Digest(SHA256, digest)))
    if got is None:
        raise BadManifest(f"its manifest {digest[:12]} is not in the tier")
    if hashlib.sha256(got[0]).hexdigest() != digest:
        raise BadManifest(f"its manifest {digest[:12]} does not match its digest")
    return got[0]


def _download(store: ObjectStore, digest: str, into: Path) -> Path:
    final = into / digest
    temp = into / f".part-{digest}-{secrets.token_hex(4)}"
    try:
        hasher = hashlib.sha256()
        with open(temp, "xb") as out:

            class _Hashing:
                def write(self, chunk: bytes) -> int:
                    hasher.update(chunk)
                    return out.write(chunk)

            size = store.download(blob_key(Digest(SHA256, digest)), _Hashing())  # type: ignore[arg-type]
        if size is None:
            raise RestoreError(f"blob {digest[:12]} of the checkpoint is not in the tier")
        if hasher.hexdigest() != digest:
            raise RestoreError(f"blob {digest[:12]} in the tier does not match its digest")
        os.replace(temp, final)
        return final
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def build(fetched: Fetched, target: Path) -> None:
    """Make the workspace in ``target`` (new, empty or absent), which the caller then renames
    into place."""
    manifest = fetched.manifest
    if manifest.user_version > USER_VERSION:
        raise RestoreError(
            f"checkpoint {fetched.ref} was made by a newer artifactfs (workspace schema "
            f"{manifest.user_version}); upgrade to restore it"
        )
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    _database(manifest, target / DATABASE)
    upper = target / UPPER
    upper.mkdir(mode=0o700, exist_ok=True)
    for ino, entry in manifest.upper.items():
        _file(fetched.blobs[entry.sha256], upper / str(ino), entry)
    if manifest.git_path:
        _git(fetched, target / GIT_DIR)


def _database(manifest: Manifest, path: Path) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA + XATTRS)
        db.execute(f"PRAGMA user_version = {USER_VERSION}")
        journal.ensure(db)
        present = {str(c[1]) for c in db.execute("PRAGMA table_info(nodes)")}
        columns = [c for c in manifest.columns if c in present]
        picks = [manifest.columns.index(c) for c in columns]
        db.execute("BEGIN")
        db.executemany(
            f"INSERT INTO nodes ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            ([row[i] for i in picks] for row in manifest.nodes),
        )
        db.executemany("INSERT INTO xattrs (ino, name, value) VALUES (?, ?, ?)", manifest.xattrs)
        db.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", sorted(manifest.meta.items())
        )
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('base_commit', ?)",
            (manifest.commit,),
        )
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        raise RestoreError(f"the checkpoint's table does not fit a workspace: {exc}") from None
    finally:
        db.close()


def _file(blob: Path, path: Path, entry: FileEntry) -> None:
    with open(blob, "rb") as source, open(path, "xb") as out:
        shutil.copyfileobj(source, out, CHUNK)
        for name, value in entry.xattrs.items():
            with contextlib.suppress(OSError):  # a file system without user xattrs
                os.setxattr(out.fileno(), name, value)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(path, entry.mode & 0o777)  # never a set-id bit from the bucket
    os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)


_NEVER_RESTORED = ("hooks/", "objects/info/alternates")
"""Git-directory paths a checkpoint never brings back: hooks run programs, alternates point
git at other directories of the restoring node."""


def _git(fetched: Fetched, root: Path) -> None:
    """The git directory, without what could run code or reach outside it (symbolic links
    are not brought back either), marked for its worktree to make its ``config`` its own."""
    manifest = fetched.manifest
    root.mkdir(mode=0o755)
    for relative in sorted(manifest.git_dirs):
        (root / relative).mkdir(mode=0o700, parents=True, exist_ok=True)
    for relative, entry in manifest.git_files.items():
        if relative.startswith(_NEVER_RESTORED) or relative == RESTORED_MARKER:
            continue
        path = root / relative
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _file(fetched.blobs[entry.sha256], path, entry)
    (root / RESTORED_MARKER).write_bytes(b"")
    for relative, mode in sorted(manifest.git_dirs.items(), reverse=True):
        os.chmod(root / relative, (mode | 0o700) & 0o777)


def changed_paths(workspace: Path) -> int:
    """How many changed rows the workspace at ``workspace`` holds (0: none, or no overlay)."""
    database = workspace / DATABASE
    if not database.is_file():
        return 0
    try:
        db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            found = db.execute("SELECT count(*) FROM nodes WHERE changed != 0").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return 1  # unreadable: treat it as holding changes (never overwrite it)
    return int(found[0]) if found else 0
