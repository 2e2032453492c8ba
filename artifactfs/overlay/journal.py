"""The overlay's change journal, and git's fsmonitor (protocol v2) hook answered from it.

Every change to a workspace appends the paths it touched (relative to the mount root, no
leading slash; a directory whose contents moved or vanished wholesale as ``dir/``) to the
``journal`` table, in the same transaction as the change itself, so the journal is never
behind the overlay. A token names a point in the journal: ``artifactfs:<epoch>:<seq>``. The
epoch is random and changes whenever the journal is reset (changes discarded), so a token from
before a reset can never be mistaken for one after it; an unknown or malformed token is
answered with ``/`` (git then checks everything, which is always correct).

git runs the hook for every ``git status``; a Python interpreter cost 37 ms of a 48 ms status
(more under load), so the hook is a shell script that reads files (``HookFiles``): the journal
is mirrored, as it is written, into *segments* in ``fsmonitor/`` beside the database, each named
by the sequence number of its first record and holding NUL-terminated paths, and ``epoch``.
The hook names the newest segment in its token and answers with every segment from the one its
token names on: the paths changed since, and a few before (a segment holds at most
``SEGMENT_RECORDS`` records over ``SEGMENT_SECONDS``). Reporting a path that did not change is
harmless (git looks at it again); leaving one out is not, so a segment is appended to before
the transaction it mirrors commits, and the segments are rebuilt from the table whenever the
overlay is opened (whatever a crash left there).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

TOKEN_PREFIX = "artifactfs"
EVERYTHING = b"/"
"""What the hook answers when it cannot tell what changed: git re-checks every path."""
HOOK_FILES = "fsmonitor"
"""The directory beside the database that mirrors the journal for the hook."""
EPOCH_FILE = "epoch"
SEGMENT_RECORDS = 64
SEGMENT_SECONDS = 1.0

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


def record(connection: sqlite3.Connection, paths: Sequence[bytes]) -> int:
    """Append ``paths`` (no commit: the caller's change and its journal lines go together);
    the sequence number of the first one (0 for none)."""
    first = 0
    for path in paths:
        seq = connection.execute("INSERT INTO journal (path) VALUES (?)", (path,)).lastrowid
        first = first or int(seq or 0)
    return first


def reset(connection: sqlite3.Connection) -> str:
    """Forget every change (they were discarded): a new epoch invalidates every old token.
    Returns the new epoch."""
    epoch = _new_epoch()
    connection.execute("DELETE FROM journal")
    connection.execute("UPDATE journal_epoch SET epoch = ? WHERE id = 1", (epoch,))
    return epoch


def epoch_of(connection: sqlite3.Connection) -> str:
    return str(connection.execute("SELECT epoch FROM journal_epoch WHERE id = 1").fetchone()[0])


def _parse(token: str) -> tuple[str, int] | None:
    prefix, _, rest = token.partition(":")
    epoch, _, seq = rest.partition(":")
    if prefix != TOKEN_PREFIX or not epoch or not seq.isdigit():
        return None
    return epoch, int(seq)


def hook_files_of(database: Path) -> Path:
    """Where the hook reads the journal of the overlay whose database is ``database``."""
    return database.parent / HOOK_FILES


class HookFiles:
    """The journal mirrored into files for the hook (see the module's docstring). Blocking;
    used by the overlay's writer, one thread at a time."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._epoch = ""
        self._newest = 0
        self._segment = -1
        self._records = 0
        self._started = 0.0

    def rebuild(self, connection: sqlite3.Connection) -> None:
        """Make the files say what the table says: its epoch, and every path it holds in one
        segment named by its last sequence number (tokens handed out before name no later
        one, so they all see it)."""
        self.close()
        self.directory.mkdir(mode=0o700, exist_ok=True)
        epoch = epoch_of(connection)
        last = int(connection.execute("SELECT coalesce(max(seq), 0) FROM journal").fetchone()[0])
        paths = [bytes(row[0]) for row in connection.execute("SELECT DISTINCT path FROM journal")]
        stale = [entry.path for entry in os.scandir(self.directory)]
        if paths:
            _write_replacing(self.directory / str(last), b"".join(p + b"\0" for p in paths))
        _write_replacing(self.directory / EPOCH_FILE, epoch.encode() + b"\n")
        keep = {str(last) if paths else None, EPOCH_FILE}
        for path in stale:
            if os.path.basename(path) not in keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self._epoch, self._newest = epoch, last if paths else 0

    def reset(self, epoch: str) -> None:
        """The journal was reset: no segment, a new epoch (old tokens get ``/``)."""
        self.close()
        self.directory.mkdir(mode=0o700, exist_ok=True)
        _write_replacing(self.directory / EPOCH_FILE, epoch.encode() + b"\n")
        for entry in os.scandir(self.directory):
            if entry.name.isdigit():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        self._epoch, self._newest = epoch, 0

    def append(self, first_seq: int, paths: Sequence[bytes]) -> None:
        """Mirror records ``first_seq``… (before their transaction commits)."""
        if not paths:
            return
        now = time.monotonic()
        if (
            self._segment < 0
            or self._records >= SEGMENT_RECORDS
            or now - self._started >= SEGMENT_SECONDS
        ):
            self.close()
            path = self.directory / str(first_seq)
            self._segment = os.open(
                path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            self._records, self._started, self._newest = 0, now, first_seq
        os.write(self._segment, b"".join(p + b"\0" for p in paths))  # one write: whole records
        self._records += len(paths)

    def token(self) -> str:
        """What the hook would answer as the token now."""
        return f"{TOKEN_PREFIX}:{self._epoch}:{self._newest}"

    def close(self) -> None:
        if self._segment >= 0:
            os.close(self._segment)
            self._segment = -1


def _write_replacing(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as out:
        out.write(data)
    os.replace(temp, path)


def changed_since(directory: Path, token: str) -> tuple[str, list[bytes]]:
    """What the hook answers (``hook_script`` does the same in the shell): the token for now,
    and the paths recorded since ``token`` (sorted, each once; ``[b"/"]``: everything)."""
    epoch = (directory / EPOCH_FILE).read_text().strip()
    segments = sorted(int(e.name) for e in os.scandir(directory) if e.name.isdigit())
    now = f"{TOKEN_PREFIX}:{epoch}:{segments[-1] if segments else 0}"
    parsed = _parse(token)
    if parsed is None or parsed[0] != epoch:
        return now, [EVERYTHING]
    found: set[bytes] = set()
    for first in segments:
        if first >= parsed[1]:
            found.update(p for p in (directory / str(first)).read_bytes().split(b"\0") if p)
    return now, sorted(found)


def hook_script(directory: Path) -> bytes:
    """git's fsmonitor hook (protocol 2) answering from the files in ``directory``: POSIX
    shell and ``cat``, no interpreter to start. Exits 1 (git then checks everything) when it
    cannot answer: not protocol 2, or no files yet."""
    where = shlex.quote(str(directory.absolute()))
    return f"""#!/bin/sh
# written by artifactfs: git's fsmonitor hook (protocol 2), answered from the workspace's
# change journal as mirrored into {where} (artifactfs/overlay/journal.py)
d={where}
[ "$1" = 2 ] || exit 1
{{ read -r epoch < "$d/epoch"; }} 2>/dev/null || exit 1
newest=0
for f in "$d"/[0-9]*; do
    [ -e "$f" ] || continue
    n=${{f##*/}}
    [ "$n" -gt "$newest" ] && newest=$n
done
printf 'artifactfs:%s:%s\\0' "$epoch" "$newest"
since=${{2#artifactfs:"$epoch":}}
case "$since" in
    "$2"|""|*[!0-9]*) printf '/\\0'; exit 0 ;;
esac
set --
for f in "$d"/[0-9]*; do
    [ -e "$f" ] || continue
    [ "${{f##*/}}" -ge "$since" ] && set -- "$@" "$f"
done
[ $# -eq 0 ] || exec cat -- "$@"
""".encode()
