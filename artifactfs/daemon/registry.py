"""The registry: which repositories the daemon keeps mounted, and what state each is in.

SQLite in WAL mode at ``$ARTIFACTFS_HOME/registry.sqlite``. State changes are written as they
happen, so ``status`` after a crash still tells the last known state. No credential is ever
stored: a token file's *path* may be (it is read at each use), its contents never are.

Concurrency: used by the daemon only, from its trio loop; statements are short (s3ql's rule).

Schema changes are migrations numbered by SQLite's ``user_version``: a registry written by an
older artifactfs is brought up to date when it is opened (in one transaction, so a crash
leaves it as it was), and one written by a newer artifactfs is refused rather than misread.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS repos (
    name          TEXT PRIMARY KEY,   -- the user's name for it: [A-Za-z0-9][A-Za-z0-9._-]{0,63}
    source        TEXT NOT NULL,      -- where it comes from; a URL never holds a password here
    ref           TEXT,               -- the ref asked for; NULL means the remote's HEAD
    mountpoint    TEXT NOT NULL UNIQUE,  -- absolute path of its mount point
    token_file    TEXT,               -- path of a file holding an access token (never the token)
    allow_other   INTEGER NOT NULL DEFAULT 0,  -- 1: mounted with allow_other (others may read)
    offline       INTEGER NOT NULL DEFAULT 0,  -- 1: added with --offline (nothing is sent)
    require_commit TEXT,              -- --require-commit: the only commit it may show
    writable      INTEGER NOT NULL DEFAULT 0,  -- 1: a writable workspace (repos/NAME/)
    depth         INTEGER NOT NULL DEFAULT 1,  -- --depth: commits of history in its git dir
    token_from    TEXT,               -- the variable add-repo took a token from (never the
                                      -- token: that lives in the daemon's memory only)
    wanted        INTEGER NOT NULL,   -- 1: keep it mounted (restart its worker if it dies);
                                      -- 0: unmounted on request, until remount
    state         TEXT NOT NULL,      -- last known: preparing | ready | failed | unmounted
    error         TEXT,               -- why, when state = failed; else NULL
    commit_id     TEXT,               -- the commit shown, once it was ready; else NULL
    files         INTEGER,            -- files in that commit's tree, once ready; else NULL
    bytes_fetched INTEGER NOT NULL DEFAULT 0,  -- bytes its current worker received from origin
    created_at    REAL NOT NULL,      -- seconds since the epoch
    updated_at    REAL NOT NULL       -- when any column last changed
);
"""

MIGRATIONS: dict[int, str | tuple[str, ...]] = {
    1: "ALTER TABLE repos ADD COLUMN allow_other INTEGER NOT NULL DEFAULT 0",
    2: (
        "ALTER TABLE repos ADD COLUMN token_from TEXT",
        "ALTER TABLE repos ADD COLUMN offline INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE repos ADD COLUMN require_commit TEXT",
        "ALTER TABLE repos ADD COLUMN writable INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE repos ADD COLUMN depth INTEGER NOT NULL DEFAULT 1",
    ),
}
"""Version N's change, applied to a registry at version N - 1 (version 0: before versions)."""

STATES = ("preparing", "ready", "failed", "unmounted")


class Conflict(Exception):
    """The name or the mount point is registered already."""

    def __init__(self, name: str, mountpoint: str) -> None:
        super().__init__(f"{name!r} or {mountpoint} is registered already")


@dataclass(frozen=True)
class Repo:
    name: str
    source: str
    ref: str | None
    mountpoint: str
    token_file: str | None
    wanted: bool
    state: str
    error: str | None
    commit: str | None
    files: int | None
    bytes_fetched: int
    allow_other: bool = False
    offline: bool = False
    require_commit: str | None = None
    writable: bool = False
    token_from: str | None = None
    """The environment variable ``add-repo`` took a token from: a restarted daemon no longer
    has that token, and says so (never the token itself)."""
    depth: int = 1
    """``--depth``: the commits of history its git directory holds (writable git mounts)."""

    def public(self) -> dict[str, Any]:
        """What ``status --json`` shows (no token file path: that is configuration)."""
        return {
            "name": self.name,
            "state": self.state,
            "source": self.source,
            "ref": self.ref,
            "commit": self.commit,
            "mount": self.mountpoint,
            "error": self.error,
            "files": self.files,
            "bytes_fetched": self.bytes_fetched,
            "allow_other": self.allow_other,
            "offline": self.offline,
            "require_commit": self.require_commit,
            "writable": self.writable,
            "depth": self.depth,
        }


_COLUMNS = (
    "name, source, ref, mountpoint, token_file, wanted, state, error, commit_id, files,"
    " bytes_fetched, allow_other, offline, require_commit, writable, token_from, depth"
)


def _repo(row: Any) -> Repo:
    """A row of ``_COLUMNS`` (SQLite keeps booleans as integers)."""
    name, source, ref, mountpoint, token_file, wanted = row[:6]
    state, error, commit, files, fetched, allow_other, offline, required, writable = row[6:15]
    token_from, depth = row[15:17]
    return Repo(
        name,
        source,
        ref,
        mountpoint,
        token_file,
        bool(wanted),
        state,
        error,
        commit,
        files,
        fetched,
        bool(allow_other),
        bool(offline),
        required,
        bool(writable),
        token_from,
        int(depth),
    )


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Create the newest schema, or bring an older registry up to it, in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise UserError(
                f"{path} was written by a newer artifactfs (registry version {version}, this one"
                f" knows {SCHEMA_VERSION}): upgrade artifactfs"
            )
        exists = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'repos'"
        ).fetchone()
        if not exists:
            db.execute(SCHEMA)
        else:
            for target in range(version + 1, SCHEMA_VERSION + 1):
                steps = MIGRATIONS[target]
                for step in (steps,) if isinstance(steps, str) else steps:
                    db.execute(step)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


class Registry:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            _migrate(self._db, path)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def all(self) -> list[Repo]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM repos ORDER BY name")
        return [_repo(row) for row in rows]

    def get(self, name: str) -> Repo | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM repos WHERE name = ?", (name,)).fetchone()
        return _repo(row) if row else None

    def by_mountpoint(self, mountpoint: str) -> Repo | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM repos WHERE mountpoint = ?", (mountpoint,)
        ).fetchone()
        return _repo(row) if row else None

    def add(
        self,
        name: str,
        source: str,
        ref: str | None,
        mountpoint: str,
        token_file: str | None,
        allow_other: bool = False,
        token_from: str | None = None,
        offline: bool = False,
        require_commit: str | None = None,
        writable: bool = False,
        depth: int = 1,
    ) -> Repo:
        """Register a repository; raise ``Conflict`` if its name or mount point is taken."""
        now = time.time()
        try:
            self._db.execute(
                "INSERT INTO repos (name, source, ref, mountpoint, token_file, allow_other,"
                " token_from, offline, require_commit, writable, depth, wanted, state,"
                " created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 'preparing', ?, ?)",
                (
                    name,
                    source,
                    ref,
                    mountpoint,
                    token_file,
                    int(allow_other),
                    token_from,
                    int(offline),
                    require_commit,
                    int(writable),
                    int(depth),
                    now,
                    now,
                ),
            )
        except sqlite3.IntegrityError:
            raise Conflict(name, mountpoint) from None
        repo = self.get(name)
        assert repo is not None
        return repo

    def remove(self, name: str) -> None:
        self._db.execute("DELETE FROM repos WHERE name = ?", (name,))

    def set_wanted(self, name: str, wanted: bool) -> None:
        self._update(name, wanted=int(wanted))

    def record_status(self, name: str, status: dict[str, Any]) -> None:
        """Store what a worker reported (only the columns it reports)."""
        state = status.get("state")
        if state not in STATES:
            return
        self._update(
            name,
            state=state,
            error=status.get("error"),
            commit_id=status.get("commit"),
            files=status.get("files"),
            bytes_fetched=int(status.get("bytes_fetched") or 0),
        )

    def record_state(self, name: str, state: str, error: str | None = None) -> None:
        assert state in STATES
        self._update(name, state=state, error=error)

    def _update(self, name: str, **columns: Any) -> None:
        assignments = ", ".join(f"{column} = ?" for column in columns)
        self._db.execute(
            f"UPDATE repos SET {assignments}, updated_at = ? WHERE name = ?",
            (*columns.values(), time.time(), name),
        )
