"""The registry: which repositories the daemon keeps mounted, and what state each is in.

SQLite in WAL mode at ``$ARTIFACTFS_HOME/registry.sqlite``. State changes are written as they
happen, so ``status`` after a crash still tells the last known state. No credential is ever
stored: a token file's *path* may be (it is read at each use), its contents never are.

Concurrency: used by the daemon only, from its trio loop; statements are short (s3ql's rule).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS repos (
    name          TEXT PRIMARY KEY,   -- the user's name for it: [A-Za-z0-9][A-Za-z0-9._-]{0,63}
    source        TEXT NOT NULL,      -- where it comes from; a URL never holds a password here
    ref           TEXT,               -- the ref asked for; NULL means the remote's HEAD
    mountpoint    TEXT NOT NULL UNIQUE,  -- absolute path of its mount point
    token_file    TEXT,               -- path of a file holding an access token (never the token)
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
        }


_COLUMNS = (
    "name, source, ref, mountpoint, token_file, wanted, state, error, commit_id, files,"
    " bytes_fetched"
)


def _repo(row: Any) -> Repo:
    name, source, ref, mountpoint, token_file, wanted, state, error, commit, files, fetched = row
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
    )


class Registry:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

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
        self, name: str, source: str, ref: str | None, mountpoint: str, token_file: str | None
    ) -> Repo:
        """Register a repository; raise ``Conflict`` if its name or mount point is taken."""
        now = time.time()
        try:
            self._db.execute(
                "INSERT INTO repos (name, source, ref, mountpoint, token_file, wanted, state,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 1, 'preparing', ?, ?)",
                (name, source, ref, mountpoint, token_file, now, now),
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
