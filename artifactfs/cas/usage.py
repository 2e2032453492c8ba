"""What the store holds, for its size cap: per blob its size and last access, in SQLite.

The cap (cas/eviction.py) needs the store's total size and its blobs in least-recently-used
order, for millions of blobs, without walking the store's directories each time. Both live in
``<cas>/usage.sqlite``:

- ``entries``: one row per published blob (``partial = 0``) and per partial blob (``partial =
  1``, its size being the bytes present so far), with the time it was last opened or
  published. An index on that time gives the LRU order; a trigger keeps ``total.bytes`` equal to
  the sum of sizes, so "how full is the store" is one row read.
- ``pins``: blobs that must stay whatever the cap (``artifactfs pin``), by the repository that
  pinned them; eviction skips them in the same query.
- ``meta``: when the store was last reconciled with the disk.

Reads must not pay for this. A worker notes what it opens and publishes in memory
(``UsageRecorder``: a dict assignment per open) and writes it out in one short transaction
from a background task every few seconds and when it stops (cas/upkeep.py). Publishes are
also counted at once against the cap, so eviction starts as soon as the store passes it,
not at the next flush.

The table may be wrong in two ways, both harmless and both repaired by ``reconcile`` (a walk
of the store: ``artifactfs cache gc``, and a daemon or a mount starting on a home whose table
was never reconciled, e.g. filled by an older artifactfs): a blob without a row (published by
an older version, by a process killed before its flush, by hand) is never chosen for eviction
until then; a row without a blob (evicted by someone who then crashed) counts towards the
total until eviction reaches it, finds the file gone and drops the row.

The database is shared by every process of the home (WAL mode): every statement is short, a
busy database is waited for (``BUSY_SECONDS``), and a failure to write it is logged and costs
only bookkeeping, never a read.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .digests import ALGORITHMS, Digest, InvalidDigest

log = logging.getLogger(__name__)

USAGE_FILE = "usage.sqlite"
BUSY_SECONDS = 10.0
RECONCILE_BATCH = 20_000
"""How long a statement waits for another process's transaction (they are all short)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    algorithm TEXT NOT NULL,     -- the digest's algorithm (a directory of the CAS)
    hex       TEXT NOT NULL,     -- the digest, lowercase hex
    partial   INTEGER NOT NULL,  -- 0: a published blob; 1: a partial blob (cas/partial.py)
    size      INTEGER NOT NULL,  -- bytes it occupies (a partial: the bytes present so far)
    atime     REAL NOT NULL,     -- last opened or published (unix time): the LRU order
    PRIMARY KEY (algorithm, hex, partial)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_lru ON entries (atime);
CREATE TABLE IF NOT EXISTS total (
    one   INTEGER PRIMARY KEY CHECK (one = 1),
    bytes INTEGER NOT NULL       -- the sum of entries.size, kept by the triggers below
);
INSERT OR IGNORE INTO total VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS entries_insert AFTER INSERT ON entries
    BEGIN UPDATE total SET bytes = bytes + new.size; END;
CREATE TRIGGER IF NOT EXISTS entries_delete AFTER DELETE ON entries
    BEGIN UPDATE total SET bytes = bytes - old.size; END;
CREATE TRIGGER IF NOT EXISTS entries_resize AFTER UPDATE OF size ON entries
    BEGIN UPDATE total SET bytes = bytes + new.size - old.size; END;
CREATE TABLE IF NOT EXISTS pins (
    algorithm TEXT NOT NULL,
    hex       TEXT NOT NULL,
    owner     TEXT NOT NULL,     -- the repository that pinned it (artifactfs pin NAME)
    PRIMARY KEY (algorithm, hex, owner)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pins_owner ON pins (owner);
CREATE TABLE IF NOT EXISTS pin_paths (
    owner TEXT NOT NULL,         -- the repository
    path  TEXT NOT NULL,         -- a path in it ('' for all of it), as given to pin
    PRIMARY KEY (owner, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL          -- 'reconciled': unix time of the last walk of the store
);
"""


@dataclass(frozen=True)
class Entry:
    """One row: a published blob or a partial, its size and last access."""

    digest: Digest
    partial: bool
    size: int
    atime: float


def _key(digest: Digest) -> tuple[str, str]:
    return digest.algorithm.name, digest.hex


def _digest(algorithm: str, hex_digest: str) -> Digest | None:
    try:
        return Digest.parse(algorithm, hex_digest)
    except InvalidDigest:
        return None  # not ours: never turned into a path


class UsageDB:
    """The shared table. Blocking: call it from a worker thread (one connection, serialised)."""

    def __init__(self, cas_root: Path) -> None:
        self.path = cas_root / USAGE_FILE
        cas_root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, isolation_level=None, timeout=BUSY_SECONDS, check_same_thread=False
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._lock:
                try:  # one transaction: processes starting together create it once
                    self._db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- reading --------------------------------------------------------------------------------

    def total(self) -> int:
        with self._lock:
            (value,) = self._db.execute("SELECT bytes FROM total").fetchone()
        return int(value)

    def get(self, digest: Digest, partial: bool = False) -> Entry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT size, atime FROM entries WHERE algorithm = ? AND hex = ? AND partial = ?",
                (*_key(digest), int(partial)),
            ).fetchone()
        return None if row is None else Entry(digest, partial, int(row[0]), float(row[1]))

    def entries(self) -> Iterator[Entry]:
        """Every row (``cache du``), read in pages so no long read transaction is held."""
        after: tuple[str, str, int] = ("", "", -1)
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT algorithm, hex, partial, size, atime FROM entries"
                    " WHERE (algorithm, hex, partial) > (?, ?, ?)"
                    " ORDER BY algorithm, hex, partial LIMIT 2000",
                    after,
                ).fetchall()
            if not rows:
                return
            for algorithm, hex_digest, partial, size, atime in rows:
                digest = _digest(algorithm, hex_digest)
                if digest is not None:
                    yield Entry(digest, bool(partial), int(size), float(atime))
            last = rows[-1]
            after = (last[0], last[1], last[2])

    def lru(self, after: tuple[float, str, str, int] | None, limit: int) -> list[Entry]:
        """Unpinned rows, least recently used first, starting after the key ``after``
        (``(atime, algorithm, hex, partial)`` of the last row of the previous page)."""
        start = after if after is not None else (float("-inf"), "", "", -1)
        with self._lock:
            rows = self._db.execute(
                "SELECT atime, algorithm, hex, partial, size FROM entries AS e"
                " WHERE (atime, algorithm, hex, partial) > (?, ?, ?, ?)"
                " AND NOT EXISTS (SELECT 1 FROM pins AS p"
                "   WHERE p.algorithm = e.algorithm AND p.hex = e.hex)"
                " ORDER BY atime, algorithm, hex, partial LIMIT ?",
                (*start, limit),
            ).fetchall()
        found = []
        for atime, algorithm, hex_digest, partial, size in rows:
            digest = _digest(algorithm, hex_digest)
            if digest is None:
                continue
            found.append(Entry(digest, bool(partial), int(size), float(atime)))
        return found

    def pinned(self) -> set[tuple[str, str]]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT algorithm, hex FROM pins").fetchall()
        return {(str(a), str(h)) for a, h in rows}

    def pin_paths(self) -> dict[str, list[str]]:
        """Every pinning repository and the paths it pinned ('' is all of it)."""
        with self._lock:
            rows = self._db.execute("SELECT owner, path FROM pin_paths ORDER BY owner, path")
            found: dict[str, list[str]] = {}
            for owner, path in rows:
                found.setdefault(str(owner), []).append(str(path))
        return found

    def pinned_bytes(self) -> dict[str, int]:
        """Bytes stored of each pinning repository's pinned blobs."""
        with self._lock:
            rows = self._db.execute(
                "SELECT p.owner, SUM(e.size) FROM pins AS p JOIN entries AS e"
                " ON e.algorithm = p.algorithm AND e.hex = p.hex AND e.partial = 0"
                " GROUP BY p.owner"
            ).fetchall()
            owners = self._db.execute("SELECT DISTINCT owner FROM pin_paths").fetchall()
        found = {str(owner): 0 for (owner,) in owners}
        found.update({str(owner): int(size or 0) for owner, size in rows})
        return found

    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    # -- writing --------------------------------------------------------------------------------

    def _write(self, statements: Callable[[sqlite3.Connection], object]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                statements(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def record(
        self,
        published: Iterable[tuple[Digest, int, float]] = (),
        touched: Iterable[tuple[Digest, float]] = (),
        partials: Iterable[tuple[Digest, int, float]] = (),
        dropped_partials: Iterable[Digest] = (),
    ) -> None:
        """One transaction: blobs published (digest, size, time), blobs opened (a blob with no
        row gains none: it may be gone), partials' present bytes, partials gone."""
        published_rows = [(*_key(d), size, at) for d, size, at in published]
        touched_rows = [(at, *_key(d), at) for d, at in touched]
        partial_rows = [(*_key(d), size, at) for d, size, at in partials]
        dropped_rows = [_key(d) for d in dropped_partials]

        def statements(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO entries VALUES (?, ?, 0, ?, ?) ON CONFLICT DO UPDATE"
                " SET size = excluded.size, atime = max(atime, excluded.atime)",
                published_rows,
            )
            db.executemany(
                "UPDATE entries SET atime = ?"
                " WHERE algorithm = ? AND hex = ? AND partial = 0 AND atime < ?",
                touched_rows,
            )
            db.executemany(
                "INSERT INTO entries VALUES (?, ?, 1, ?, ?) ON CONFLICT DO UPDATE"
                " SET size = excluded.size, atime = max(atime, excluded.atime)",
                partial_rows,
            )
            db.executemany(
                "DELETE FROM entries WHERE algorithm = ? AND hex = ? AND partial = 1",
                dropped_rows,
            )

        self._write(statements)

    def forget(self, entries: Iterable[tuple[Digest, bool]]) -> None:
        """Drop rows of blobs and partials that are gone (evicted, collected)."""
        rows = [(*_key(d), int(partial)) for d, partial in entries]
        if rows:
            self._write(
                lambda db: db.executemany(
                    "DELETE FROM entries WHERE algorithm = ? AND hex = ? AND partial = ?", rows
                )
            )

    def set_pins(self, owner: str, paths: list[str], digests: Iterable[Digest]) -> None:
        """Pin ``digests`` for ``owner`` (adding to what it pinned) and remember the paths."""
        rows = [(*_key(d), owner) for d in digests]

        def statements(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR IGNORE INTO pins VALUES (?, ?, ?)", rows)
            db.executemany(
                "INSERT OR IGNORE INTO pin_paths VALUES (?, ?)", [(owner, p) for p in paths]
            )

        self._write(statements)

    def unpin(self, owner: str) -> int:
        """Drop every pin of ``owner``; how many blobs it had pinned."""
        removed = 0

        def statements(db: sqlite3.Connection) -> None:
            nonlocal removed
            removed = db.execute("DELETE FROM pins WHERE owner = ?", (owner,)).rowcount
            db.execute("DELETE FROM pin_paths WHERE owner = ?", (owner,))

        self._write(statements)
        return removed

    def _in_batches(self, statement: str, rows: Sequence[tuple[object, ...]]) -> None:
        for start in range(0, len(rows), RECONCILE_BATCH):
            batch = rows[start : start + RECONCILE_BATCH]
            self._write(lambda db: db.executemany(statement, batch))  # noqa: B023 - called at once

    def set_meta(self, key: str, value: str) -> None:
        self._write(
            lambda db: db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT DO UPDATE SET value = excluded.value",
                (key, value),
            )
        )

    def replace_all(
        self, found: dict[tuple[Digest, bool], tuple[int, float]], started: float
    ) -> None:
        """Reconcile with a walk of the store (``found``: what is on disk, with size and mtime).
        Rows of what is gone are dropped, unless they were written after the walk ``started``
        (a blob published meanwhile); what has no row gets one, its mtime as its last access
        (an old blob is evicted before a new one); sizes are corrected."""
        keys = {(*_key(d), int(p)): value for (d, p), value in found.items()}
        with self._lock:
            rows = self._db.execute(
                "SELECT algorithm, hex, partial, size, atime FROM entries"
            ).fetchall()
        stale = [
            (a, h, p) for a, h, p, _, atime in rows if (a, h, p) not in keys and atime < started
        ]
        known = {(a, h, p): size for a, h, p, size, _ in rows}
        added = [(a, h, p, size, mtime) for (a, h, p), (size, mtime) in keys.items()
                 if (a, h, p) not in known]  # fmt: skip
        resized = [(size, a, h, p) for (a, h, p), (size, _) in keys.items()
                   if (a, h, p) in known and known[(a, h, p)] != size]  # fmt: skip

        # in many short transactions: other processes record and evict meanwhile
        self._in_batches(
            "DELETE FROM entries WHERE algorithm = ? AND hex = ? AND partial = ?", stale
        )
        self._in_batches("INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?, ?)", added)
        self._in_batches(
            "UPDATE entries SET size = ? WHERE algorithm = ? AND hex = ? AND partial = ?", resized
        )
        self.set_meta("reconciled", repr(time.time()))


# -- walking the store ------------------------------------------------------------------------


def walk_store(cas_root: Path) -> dict[tuple[Digest, bool], tuple[int, float]]:
    """What the store holds on disk: published blobs and persisted partials, with the bytes
    each occupies (a partial is sparse: its allocated blocks) and its mtime. Blocking, and
    a walk of every directory: only for ``reconcile``, never per eviction."""
    found: dict[tuple[Digest, bool], tuple[int, float]] = {}
    for partial, base in ((False, cas_root), (True, cas_root / "partial")):
        for name in ALGORITHMS:
            for digest, stat in _files_of(base / name, name):
                size = min(stat.st_size, stat.st_blocks * 512) if partial else stat.st_size
                found[(digest, partial)] = (size, stat.st_mtime)
    return found


def _files_of(directory: Path, algorithm: str) -> Iterator[tuple[Digest, os.stat_result]]:
    try:
        prefixes = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for prefix in prefixes:
        if len(prefix.name) != 2 or not prefix.is_dir(follow_symlinks=False):
            continue
        try:
            files = list(os.scandir(prefix.path))
        except FileNotFoundError:
            continue
        for entry in files:
            digest = _digest(algorithm, entry.name)  # temporaries and maps are not digests
            if digest is None or digest.hex[:2] != prefix.name:
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield digest, stat


def reconcile(cas_root: Path, db: UsageDB) -> int:
    """Make the table agree with the disk (see the module docstring); how many rows changed
    is not tracked: returns how many blobs and partials the store holds."""
    started = time.time()
    found = walk_store(cas_root)
    db.replace_all(found, started)
    return len(found)


# -- a worker's in-memory records -------------------------------------------------------------


class UsageRecorder:
    """What one process opened and published since its last flush. Thread-safe; recording
    costs a dict assignment, and the table is written only by ``flush`` (in a thread).

    ``limit`` (bytes, optional) is the store's cap as this process knows it: when what it
    published since the last flush would take the recorded total past it, ``over_limit`` is
    called (the upkeep task then flushes and evicts at once); past ``hard_limit`` the
    publishing thread itself does that before it returns (``evict_now``), so the store never
    runs far past its cap however fast blobs arrive (see cas/upkeep.py)."""

    def __init__(self, cas_root: Path) -> None:
        self.cas_root = cas_root
        self._lock = threading.Lock()
        self._published: dict[Digest, tuple[int | None, float]] = {}
        self._touched: dict[Digest, float] = {}
        self._partials: dict[Digest, tuple[int, float]] = {}
        self._dropped: set[Digest] = set()
        self._new_bytes = 0
        """Bytes published since the last flush (not in ``known_total`` yet)."""
        self._asked = False
        """``over_limit`` was called since the last flush."""
        self._total_known = False
        self.known_total = 0
        """The table's total at the last flush."""
        self.limit: int | None = None
        self.hard_limit: int | None = None
        self.over_limit: Callable[[], None] | None = None
        self.evict_now: Callable[[], None] | None = None
        self._db: UsageDB | None = None
        self._opening = threading.Lock()

    # -- recording (any thread, the trio loop included) ------------------------------------

    def touched(self, digest: Digest) -> None:
        self._touched[digest] = time.time()  # one assignment: atomic under the GIL

    def published(self, digest: Digest, size: int | None) -> None:
        """A blob was published (``size`` None: look at the file). Called in the publishing
        thread, never on the trio loop: past the hard limit it evicts before it returns."""
        if size is None:
            try:
                size = os.stat(
                    self.cas_root / digest.algorithm.name / digest.hex[:2] / digest.hex
                ).st_size
            except FileNotFoundError:
                return
        if not self._total_known:  # the first publish: what others recorded before we began
            try:
                self.known_total = self.database().total()
                self._total_known = True
            except (sqlite3.Error, OSError) as exc:
                log.warning("could not read the store's usage: %s", exc)
        with self._lock:
            if digest not in self._published:
                self._new_bytes += size
            self._published[digest] = (size, time.time())
            estimate = self.known_total + self._new_bytes
        if self.hard_limit is not None and estimate > self.hard_limit and self.evict_now:
            self.evict_now()
        elif self.limit is not None and estimate > self.limit and self.over_limit:
            with self._lock:
                asked, self._asked = self._asked, True
            if not asked:  # once per flush, not once per blob of a large pack
                self.over_limit()

    def partial(self, digest: Digest, present: int) -> None:
        with self._lock:
            self._partials[digest] = (present, time.time())
            self._dropped.discard(digest)

    def partial_gone(self, digest: Digest) -> None:
        with self._lock:
            self._partials.pop(digest, None)
            self._dropped.add(digest)

    # -- writing out (a thread) ---------------------------------------------------------------

    def database(self) -> UsageDB:
        with self._opening:  # the upkeep thread and a publishing thread may both ask first
            if self._db is None:
                self._db = UsageDB(self.cas_root)
            return self._db

    def flush(self) -> int:
        """Write what was recorded; return the table's total. Blocking. What cannot be
        written is kept for the next flush (and logged)."""
        with self._lock:
            published, self._published = self._published, {}
            touched, self._touched = self._touched, {}
            partials, self._partials = self._partials, {}
            dropped, self._dropped = self._dropped, set()
            new_bytes, self._new_bytes = self._new_bytes, 0
            self._asked = False
        try:
            db = self.database()
            if published or touched or partials or dropped:
                db.record(
                    [(d, s, at) for d, (s, at) in published.items() if s is not None],
                    touched.items(),
                    [(d, s, at) for d, (s, at) in partials.items()],
                    dropped,
                )
            total = db.total()
        except (sqlite3.Error, OSError) as exc:
            log.warning("could not record the store's usage: %s", exc)
            with self._lock:  # keep it for the next try; newer records win
                self._published = {**published, **self._published}
                self._touched = {**touched, **self._touched}
                self._partials = {**partials, **self._partials}
                self._dropped |= dropped - set(self._partials)
                self._new_bytes += new_bytes
            return self.known_total + new_bytes
        self.known_total = total
        self._total_known = True
        return total

    def close(self) -> None:
        with self._opening:
            if self._db is not None:
                self._db.close()
                self._db = None
