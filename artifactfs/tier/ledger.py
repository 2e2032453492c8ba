"""Which of this home's blobs the tier holds: the rest is the upload backlog.

``<home>/tier.sqlite`` has one row per blob known to be in the tier (uploaded from here, read
from it, or refused by a create-only put because another node was first). The backlog is not a
queue that a crash could lose: it is every published blob of the store's own table
(``cas/usage.sqlite``, which a reconciliation refills after a crash) without a row here. So
whatever a node fetched from an origin is uploaded eventually, across restarts, by whichever
process of the home gets to it first; an upload is leased (``leases``) so that two workers of
one home do not send the same blob at once, and a failed one waits (``failures``) before it is
tried again.

The ledger is per tier: opening it for another ``tier.url`` forgets what it knew.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..cas import Digest
from ..cas.digests import InvalidDigest
from ..cas.usage import USAGE_FILE, UsageDB

LEDGER_FILE = "tier.sqlite"
BUSY_SECONDS = 10.0
LEASE_SECONDS = 600.0
RETRY_SECONDS = (5.0, 30.0, 120.0, 600.0)
"""How long a failed upload waits before its next try, by the number of failures so far."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS held (
    algorithm TEXT NOT NULL,
    hex       TEXT NOT NULL,
    PRIMARY KEY (algorithm, hex)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    algorithm TEXT NOT NULL,
    hex       TEXT NOT NULL,
    until     REAL NOT NULL,     -- an upload in progress elsewhere, until then
    PRIMARY KEY (algorithm, hex)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS failures (
    algorithm TEXT NOT NULL,
    hex       TEXT NOT NULL,
    tries     INTEGER NOT NULL,
    next_try  REAL NOT NULL,
    PRIMARY KEY (algorithm, hex)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Pending:
    digest: Digest
    size: int


class Ledger:
    """Blocking; one connection per process, serialised. Call it from a worker thread."""

    def __init__(self, home_root: Path, cas_root: Path, tier_url: str) -> None:
        self.path = home_root / LEDGER_FILE
        UsageDB(cas_root).close()  # its tables exist before they are attached
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, isolation_level=None, timeout=BUSY_SECONDS, check_same_thread=False
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("ATTACH DATABASE ? AS usage", (str(cas_root / USAGE_FILE),))
            self._db.execute("BEGIN IMMEDIATE")  # one transaction: processes start together
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            row = self._db.execute("SELECT value FROM ledger_meta WHERE key = 'url'").fetchone()
            if row is None or row[0] != tier_url:  # another tier: what we knew is not true there
                for table in ("held", "leases", "failures"):
                    self._db.execute(f"DELETE FROM {table}")
                self._db.execute(
                    "INSERT OR REPLACE INTO ledger_meta VALUES ('url', ?)", (tier_url,)
                )
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def holds(self, digest: Digest) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM held WHERE algorithm = ? AND hex = ?",
                (digest.algorithm.name, digest.hex),
            ).fetchone()
        return row is not None

    def mark_held(self, digests: Iterable[Digest]) -> None:
        rows = [(digest.algorithm.name, digest.hex) for digest in digests]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR IGNORE INTO held VALUES (?, ?)", rows)
                self._db.executemany("DELETE FROM leases WHERE algorithm = ? AND hex = ?", rows)
                self._db.executemany("DELETE FROM failures WHERE algorithm = ? AND hex = ?", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def backlog_size(self) -> tuple[int, int]:
        """Blobs (and their bytes) the store has and the tier is not known to hold."""
        with self._lock:
            count, size = self._db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM usage.entries e WHERE partial = 0"
                " AND NOT EXISTS (SELECT 1 FROM held h"
                " WHERE h.algorithm = e.algorithm AND h.hex = e.hex)"
            ).fetchone()
        return int(count), int(size)

    def held_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM held").fetchone()[0])

    def lease(self, limit: int, now: float | None = None) -> list[Pending]:
        """Up to ``limit`` blobs to upload now, leased to this process: not held, not leased
        by another process, not waiting after a failure. Oldest use first."""
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT e.algorithm, e.hex, e.size FROM usage.entries e WHERE e.partial = 0"
                    " AND NOT EXISTS (SELECT 1 FROM held h"
                    "   WHERE h.algorithm = e.algorithm AND h.hex = e.hex)"
                    " AND NOT EXISTS (SELECT 1 FROM leases l"
                    "   WHERE l.algorithm = e.algorithm AND l.hex = e.hex AND l.until > ?)"
                    " AND NOT EXISTS (SELECT 1 FROM failures f"
                    "   WHERE f.algorithm = e.algorithm AND f.hex = e.hex AND f.next_try > ?)"
                    " ORDER BY e.atime LIMIT ?",
                    (now, now, limit),
                ).fetchall()
                self._db.executemany(
                    "INSERT OR REPLACE INTO leases VALUES (?, ?, ?)",
                    [
                        (algorithm, hex_digest, now + LEASE_SECONDS)
                        for algorithm, hex_digest, _ in rows
                    ],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        pending = []
        for algorithm, hex_digest, size in rows:
            try:
                pending.append(Pending(Digest.parse(algorithm, hex_digest), int(size)))
            except InvalidDigest:
                continue  # not ours: never turned into a key
        return pending

    def failed(self, digest: Digest, now: float | None = None) -> float:
        """An upload failed: it waits before its next try. Returns the wait."""
        now = time.time() if now is None else now
        key = (digest.algorithm.name, digest.hex)
        with self._lock:
            row = self._db.execute(
                "SELECT tries FROM failures WHERE algorithm = ? AND hex = ?", key
            ).fetchone()
            tries = 1 if row is None else int(row[0]) + 1
            wait = RETRY_SECONDS[min(tries, len(RETRY_SECONDS)) - 1]
            self._db.execute(
                "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)", (*key, tries, now + wait)
            )
            self._db.execute("DELETE FROM leases WHERE algorithm = ? AND hex = ?", key)
        return wait
