"""The overlay's change journal, and git's fsmonitor (protocol v2) hook answered from it.

Every change to a workspace appends the paths it touched (relative to the mount root, no
leading slash; a directory whose contents moved or vanished wholesale as ``dir/``) to the
``journal`` table, in the same transaction as the change itself, so the journal is never
behind the overlay. A token names a point in the journal: ``artifactfs:<epoch>:<seq>``. The
epoch is random and changes whenever the journal is reset (changes discarded), so a token from
before a reset can never be mistaken for one after it; an unknown or malformed token is
answered with ``/`` (git then checks everything, which is always correct).

The hook runs once per ``git status`` in a bare interpreter (``python -S``): it imports only
the standard library, opens the database read-only, and exits 0 on success; on any failure it
exits 1 and git falls back to a full scan.
"""

from __future__ import annotations

import secrets
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

TOKEN_PREFIX = "artifactfs"
EVERYTHING = b"/"
"""What the hook answers when it cannot tell what changed: git re-checks every path."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,  -- order of the changes
    path BLOB NOT NULL                       -- relative to the mount root; 'dir/' for a subtree
);
CREATE TABLE IF NOT EXISTS journal_epoch (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    epoch TEXT NOT NULL                      -- random; a new one on every reset
);
"""


def ensure(connection: sqlite3.Connection) -> None:
    """Create the journal's tables if missing (at open time: ``executescript`` commits)."""
    if not _has_tables(connection):
        connection.executescript(SCHEMA)
    if connection.execute("SELECT 1 FROM journal_epoch").fetchone() is None:
        connection.execute("INSERT INTO journal_epoch (id, epoch) VALUES (1, ?)", (_new_epoch(),))


def _has_tables(connection: sqlite3.Connection) -> bool:
    found = connection.execute(
        "SELECT count(*) FROM sqlite_master WHERE name IN ('journal', 'journal_epoch')"
    ).fetchone()
    return bool(found and found[0] == 2)


def _new_epoch() -> str:
    return secrets.token_hex(8)


def record(connection: sqlite3.Connection, paths: Iterable[bytes]) -> None:
    """Append ``paths`` (no commit: the caller's change and its journal lines go together)."""
    connection.executemany("INSERT INTO journal (path) VALUES (?)", ((p,) for p in paths))


def reset(connection: sqlite3.Connection) -> None:
    """Forget every change (they were discarded): a new epoch invalidates every old token."""
    connection.execute("DELETE FROM journal")
    connection.execute("UPDATE journal_epoch SET epoch = ? WHERE id = 1", (_new_epoch(),))


def current_token(connection: sqlite3.Connection) -> str:
    epoch = connection.execute("SELECT epoch FROM journal_epoch WHERE id = 1").fetchone()[0]
    seq = connection.execute("SELECT coalesce(max(seq), 0) FROM journal").fetchone()[0]
    return f"{TOKEN_PREFIX}:{epoch}:{seq}"


def _parse(token: str) -> tuple[str, int] | None:
    prefix, _, rest = token.partition(":")
    epoch, _, seq = rest.partition(":")
    if prefix != TOKEN_PREFIX or not epoch or not seq.isdigit():
        return None
    return epoch, int(seq)


def changed_since(database: Path, token: str) -> tuple[str, list[bytes]]:
    """The token for now, and the paths changed after ``token`` (``[b"/"]``: everything)."""
    uri = f"{database.absolute().as_uri()}?mode=ro"
    connection = sqlite3.connect(uri, uri=True)
    try:
        with connection:  # one read transaction: the token and the paths agree
            now = current_token(connection)
            parsed = _parse(token)
            epoch = now.split(":")[1]
            if parsed is None or parsed[0] != epoch:
                return now, [EVERYTHING]
            rows = connection.execute(
                "SELECT DISTINCT path FROM journal WHERE seq > ? ORDER BY path", (parsed[1],)
            ).fetchall()
    finally:
        connection.close()
    return now, [bytes(row[0]) for row in rows]


def hook_main(argv: Sequence[str], database: str) -> int:
    """git's fsmonitor hook, protocol version 2: ``argv`` is ``2 TOKEN``; prints the new token
    and the changed paths, each NUL-terminated."""
    if len(argv) < 2 or argv[0] != "2":
        print("artifactfs fsmonitor: only protocol version 2 is spoken", file=sys.stderr)
        return 1
    try:
        now, paths = changed_since(Path(database), argv[1])
    except sqlite3.Error as exc:
        print(f"artifactfs fsmonitor: {exc}", file=sys.stderr)
        return 1
    out = sys.stdout.buffer
    out.write(now.encode() + b"\0")
    for path in paths:
        out.write(path + b"\0")
    out.flush()
    return 0
