"""Snapshots through the tier: a node that prepared a commit shares its snapshot, and a node
with a cold home mounts that commit with the origin down.

``share_snapshot`` uploads a consistent copy of a snapshot file (SQLite's backup, so a size
learned meanwhile through the WAL never tears it) under ``keys.snapshot_key`` with a
create-only put, after a look that spares sending it again. It is best effort: a mount never
fails or waits because of it.

``snapshot_from_tier`` is the other way, for a pinned full commit id only (a branch or a tag
would need the origin to say what it points to now). The bucket is shared, so what comes from
it is untrusted like an origin's answer: the file must open as SQLite, pass ``quick_check``,
name the commit asked for, and every entry reachable from the root passes the checks entries
from an origin pass (``snapshot/entries.py``: names, kinds, ids, sizes, symlink targets). The
snapshot is then *written again* by ``write_snapshot`` from those checked entries, so the file a
mount opens is one we built, never the downloaded one.

Blocking: run in worker threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from ..snapshot.entries import Kind, NewEntry, RefusedEntry, check_name, check_symlink_target
from ..snapshot.index import (
    ROOT_INODE,
    SCHEMA_VERSION,
    DirectoryListing,
    SnapshotMeta,
    write_snapshot,
)
from .keys import snapshot_key
from .objects import BoundedWriter, TierError, TooLarge

if TYPE_CHECKING:
    from .access import TierAccess

log = logging.getLogger(__name__)

MAX_SNAPSHOT_BYTES = 2 << 30
"""A snapshot downloaded from the tier larger than this is refused (a million entries take
about 150 MB)."""
MAX_ENTRIES = 10_000_000

_HEX = {"sha1": re.compile(r"[0-9a-f]{40}"), "sha256": re.compile(r"[0-9a-f]{64}")}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KINDS = {Kind.DIRECTORY, Kind.FILE, Kind.EXECUTABLE, Kind.SYMLINK, Kind.SUBMODULE}


class UntrustedSnapshot(ValueError):
    """A snapshot from the tier failed a check; the message says which."""


def share_snapshot(tier: TierAccess, display: str, commit: str, path: Path) -> bool:
    """Upload the snapshot of ``commit`` unless the tier has it; True if this call did.
    Raises ``TierError`` (the caller logs it) and ``OSError`` (our disk)."""
    key = snapshot_key(display, commit)
    store = tier.store
    if store.head(key) is not None:
        return False
    copy = path.with_name(f".{path.name}.tier-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        source = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")  # one file, no WAL beside it
        finally:
            target.close()
            source.close()
        return store.put_new(key, copy)
    except sqlite3.Error as exc:
        raise OSError(f"could not copy {path.name}: {exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            copy.unlink()


def share_quietly(tier: TierAccess, display: str, commit: str, path: Path) -> None:
    """``share_snapshot``, its failures logged (a mount never fails because of the tier)."""
    try:
        if share_snapshot(tier, display, commit, path):
            log.info("shared the snapshot of %s with the tier", commit)
    except ValueError:  # not a full commit id: nothing another node could ask for
        return
    except TierError as exc:
        log.warning("could not share the snapshot of %s with the tier: %s", commit, exc)
    except OSError as exc:
        log.warning("could not share the snapshot of %s: %s", commit, exc.strerror or exc)


def share_file(tier: TierAccess, key: str, path: Path) -> bool:
    """Upload a file that never changes (a kept pack) unless the tier has it; True if this
    call did. Raises ``TierError`` and ``OSError``."""
    store = tier.store
    if store.head(key) is not None:
        return False
    return store.put_new(key, path)


def file_from_tier(
    tier: TierAccess, key: str, final: Path, check: Callable[[Path], None], max_bytes: int
) -> bool:
    """Make ``final`` the tier's object ``key`` once ``check(downloaded)`` passed (it raises
    ``ValueError`` to refuse); False, with a log line, otherwise. ``final`` is never replaced."""
    final.parent.mkdir(parents=True, exist_ok=True)
    downloaded = final.with_name(f".{final.name}.tier-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(downloaded, "xb") as out:
            size = tier.store.download(key, BoundedWriter(out, max_bytes))  # type: ignore[arg-type]
            out.flush()
            os.fsync(out.fileno())
        if size is None:
            log.info("the tier has no %s", final.name)
            return False
        check(downloaded)
        os.chmod(downloaded, 0o444)
        os.link(downloaded, final)
    except FileExistsError:
        return True  # another process of this home was first: the same content
    except TierError as exc:
        log.warning("could not get %s from the tier: %s", final.name, exc)
        return False
    except (ValueError, TooLarge) as exc:
        log.error("the tier's %s is refused: %s", final.name, str(exc)[:300])
        return False
    except OSError as exc:
        log.warning("could not keep the tier's %s: %s", final.name, exc.strerror or exc)
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            downloaded.unlink()
    return True


def snapshot_from_tier(tier: TierAccess | None, display: str, commit: str, final: Path) -> bool:
    """Make ``final`` the snapshot of ``commit`` from the tier's copy, checked and written
    again here. False (and a log line saying why) when there is no tier, it has no copy, it
    cannot be reached, or its copy fails a check."""
    if tier is None:
        return False
    try:
        key = snapshot_key(display, commit)
    except ValueError:
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    downloaded = final.with_name(f".{final.name}.tier-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(downloaded, "xb") as out:
            size = tier.store.download(key, BoundedWriter(out, MAX_SNAPSHOT_BYTES))  # type: ignore[arg-type]
        if size is None:
            log.info("the tier has no snapshot of %s at %s", display, commit)
            return False
        meta = rebuild_snapshot(downloaded, final, commit)
    except TierError as exc:
        log.warning("could not get the snapshot of %s from the tier: %s", commit, exc)
        return False
    except (UntrustedSnapshot, TooLarge) as exc:
        log.error("the tier's snapshot of %s at %s is refused: %s", display, commit, exc)
        return False
    except OSError as exc:
        log.warning("could not keep the tier's snapshot of %s: %s", commit, exc.strerror or exc)
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            downloaded.unlink()
    log.info(
        "snapshot of %s at %s from the tier: %d files, %d bytes",
        display,
        commit,
        meta.files,
        meta.total_size,
    )
    return True


def rebuild_snapshot(downloaded: Path, final: Path, commit: str) -> SnapshotMeta:
    """Check the snapshot file ``downloaded`` and write its entries again into ``final``
    (``write_snapshot``: atomic, never replacing a published one). Raises
    ``UntrustedSnapshot``."""
    try:
        db = sqlite3.connect(f"file:{quote(str(downloaded))}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise UntrustedSnapshot(f"not SQLite: {exc}") from None
    try:
        try:
            db.execute("PRAGMA trusted_schema=OFF")  # no functions run from its schema
            db.execute("PRAGMA query_only=ON")
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise UntrustedSnapshot("damaged (SQLite's quick_check failed)")
            _check_objects(db)  # before any query of its tables
            values = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as exc:
            raise UntrustedSnapshot(f"not a snapshot: {exc}") from None
        if values.get("schema_version") != str(SCHEMA_VERSION):
            raise UntrustedSnapshot(f"not a version {SCHEMA_VERSION} snapshot")
        if values.get("commit") != commit:
            raise UntrustedSnapshot(f"it names commit {str(values.get('commit'))[:80]!r}")
        object_format = values.get("object_format")
        if object_format not in _HEX:
            raise UntrustedSnapshot(f"unknown object format {str(object_format)[:20]!r}")
        try:
            commit_time = int(values.get("commit_time", ""))
        except ValueError:
            raise UntrustedSnapshot("no commit time") from None
        checker = _EntryChecker(db, _HEX[object_format])
        try:
            return write_snapshot(
                final, commit, object_format, commit_time, ROOT_INODE, checker.listing
            )
        except sqlite3.IntegrityError as exc:  # a name twice in one directory
            raise UntrustedSnapshot(f"inconsistent entries: {exc}") from None
        except sqlite3.Error as exc:
            raise UntrustedSnapshot(f"unreadable entries: {exc}") from None
    finally:
        db.close()


_TABLES = frozenset(("meta", "entries"))


def _check_objects(db: sqlite3.Connection) -> None:
    """The file holds our two tables and indexes, nothing else: a view (which can be endless:
    a recursive one), a trigger or a virtual table never reaches a query."""
    tables: set[str] = set()
    for kind, name, sql in db.execute("SELECT type, name, sql FROM sqlite_master"):
        if kind == "table" and isinstance(sql, str) and sql.startswith("CREATE TABLE "):
            tables.add(name)
        elif kind != "index":
            raise UntrustedSnapshot(f"an unexpected {str(kind)[:10]} {str(name)[:40]!r}")
    if tables != _TABLES:
        raise UntrustedSnapshot(f"tables {sorted(tables)[:4]!r:.80}, not {sorted(_TABLES)!r}")


_EMPTY_BLOBS = frozenset(
    (
        "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391",  # git's empty blob, sha1
        "473a0f4c3be8a93681a267e3b1e9a7dcda1185436fe141f7749120a303721813",  # and sha256
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # sha256 of b""
    )
)
"""The only contents a shared snapshot may list with size 0."""


class _EntryChecker:
    """The children of one directory of the downloaded snapshot, checked as an origin's
    entries are; a directory's key is its inode there."""

    def __init__(self, db: sqlite3.Connection, oid: re.Pattern[str]) -> None:
        self._db = db
        self._oid = oid
        self._seen = 0

    def listing(self, inode: int) -> DirectoryListing[int]:
        rows = self._db.execute(
            "SELECT inode, name, kind, oid, size, target, sha256 FROM entries"
            " WHERE parent = ? AND inode != ? ORDER BY inode",
            (inode, ROOT_INODE),
        ).fetchall()
        self._seen += len(rows)
        if self._seen > MAX_ENTRIES:
            raise UntrustedSnapshot(f"more than {MAX_ENTRIES} entries")
        entries: list[NewEntry] = []
        keys: list[int | None] = []
        for child, name, kind, oid, size, target, sha256 in rows:
            try:
                entry = self._entry(name, kind, oid, size, target, sha256)
            except RefusedEntry as exc:
                raise UntrustedSnapshot(f"entry {child}: {exc}") from None
            entries.append(entry)
            keys.append(child if entry.kind is Kind.DIRECTORY else None)
        return DirectoryListing(entries, keys)

    def _entry(
        self, name: object, kind: object, oid: object, size: object, target: object, sha: object
    ) -> NewEntry:
        if not isinstance(name, bytes):
            raise RefusedEntry("a name that is not bytes")
        check_name(name)
        if not isinstance(kind, int) or kind not in {int(k) for k in _KINDS}:
            raise RefusedEntry(f"unknown kind {kind!r:.20}")
        kind = Kind(kind)
        if oid is not None and not (isinstance(oid, str) and self._oid.fullmatch(oid)):
            raise RefusedEntry("an object id of the wrong form")
        if oid is None and kind is not Kind.DIRECTORY:
            raise RefusedEntry("no object id")
        if size is not None and not (isinstance(size, int) and 0 <= size < 1 << 62):
            raise RefusedEntry("a size that is not a count of bytes")
        if sha is not None and not (
            isinstance(sha, str) and kind.has_blob and _SHA256.fullmatch(sha)
        ):
            raise RefusedEntry("a sha256 of the wrong form")
        if size == 0 and kind.has_blob and oid not in _EMPTY_BLOBS and sha not in _EMPTY_BLOBS:
            # a file listed empty is never read, so never checked: only the empty blob may be
            raise RefusedEntry("an empty size for a blob that is not the empty one")
        if kind is Kind.SYMLINK:
            if not isinstance(target, bytes):
                raise RefusedEntry("a symlink without a target")
            check_symlink_target(target)
            if size != len(target):
                raise RefusedEntry("a symlink whose size is not its target's")
        elif target is not None:
            raise RefusedEntry("a target on what is not a symlink")
        if kind is Kind.DIRECTORY and size is not None:
            raise RefusedEntry("a directory with a size")
        return NewEntry(name, kind, oid, size, target, sha)
