"""Extended attributes that let people and tools see what a mount is doing.

On the root: ``user.artifactfs.state`` (``preparing|ready|failed``), ``.error`` when failed,
``.source`` (credentials redacted), ``.ref``, ``.commit`` and ``.files`` once ready, and
``.bytes_fetched`` (bytes received from the origin by this mount), ``.writable`` (``1`` for a
workspace, else ``0``), ``.read_sizes`` (the kernel's read requests so far by size, as
``SIZE:COUNT`` lines: how large its reads are, fs/read_ahead.py), ``.read_ahead`` where it is
chosen open by open (``SMALL LARGE`` in KiB: for files being fetched, for complete ones) and,
in a workspace once ready, ``.changed`` (paths changed). On
entries with an object:
``user.artifactfs.oid`` (the git object id); ``user.artifactfs.sha256`` where the origin vouches
for one (Hub LFS files); on files ``user.artifactfs.cached`` (bytes present locally).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..snapshot import Kind, Row
from .gate import GateState
from .state import MountState

PREFIX = b"user.artifactfs."
STATE = PREFIX + b"state"
ERROR = PREFIX + b"error"
SOURCE = PREFIX + b"source"
REF = PREFIX + b"ref"
COMMIT = PREFIX + b"commit"
FILES = PREFIX + b"files"
BYTES_FETCHED = PREFIX + b"bytes_fetched"
OID = PREFIX + b"oid"
SHA256 = PREFIX + b"sha256"
CACHED = PREFIX + b"cached"
WRITABLE = PREFIX + b"writable"
CHANGED = PREFIX + b"changed"
READ_SIZES = PREFIX + b"read_sizes"
READ_AHEAD = PREFIX + b"read_ahead"


def root_values(state: MountState) -> dict[bytes, bytes]:
    values = {
        STATE: state.gate.state.value.encode(),
        SOURCE: state.source_display.encode(),
        REF: state.shown_ref.encode(),
        BYTES_FETCHED: str(state.counters.bytes_received).encode(),
        WRITABLE: b"1" if state.writable else b"0",
        READ_SIZES: "".join(
            f"{size}:{n}\n" for size, n in sorted(state.read_sizes.items())
        ).encode(),
    }
    if state.read_ahead is not None and state.read_ahead.attached:
        values[READ_AHEAD] = f"{state.read_ahead.small_kib} {state.read_ahead.large_kib}".encode()
    if state.gate.state is GateState.FAILED:
        values[ERROR] = (state.gate.error or "unknown error").encode()
    if state.gate.state is GateState.READY and state.snapshot is not None:
        values[COMMIT] = state.snapshot.meta.commit.encode()
        values[FILES] = str(state.snapshot.meta.files).encode()
        if state.changed_paths is not None:
            values[CHANGED] = str(state.changed_paths()).encode()
    return values


def entry_names(row: Row) -> list[bytes]:
    if row.kind is Kind.SYMLINK:
        return []  # the kernel refuses user.* attributes on symlinks
    names = []
    if row.oid is not None:
        names.append(OID)
    if row.sha256 is not None:
        names.append(SHA256)
    if row.kind.has_blob:
        names.append(CACHED)
    return names


async def entry_value(
    row: Row, name: bytes, cached_bytes: Callable[[Row], Awaitable[int]]
) -> bytes | None:
    if name == OID and row.oid is not None:
        return row.oid.encode()
    if name == SHA256 and row.sha256 is not None:
        return row.sha256.encode()
    if name == CACHED and row.kind.has_blob:
        return str(await cached_bytes(row)).encode()
    return None
