"""Where the bytes of snapshot entries come from: the operations ask, a source answers.

Implementations: ``sources/git/content.py`` (whole blobs, verified before they are served)
and ``sources/hub/content.py`` (Hub files, read by range).
"""

from __future__ import annotations

from typing import Protocol

from ..cas import SHA256, Digest
from ..snapshot import Row
from .generations import Generation


class BlobReader(Protocol):
    async def read(self, offset: int, size: int) -> bytes: ...

    def close(self) -> None: ...


class Content(Protocol):
    def open(self, generation: Generation, row: Row, kernel_inode: int) -> BlobReader:
        """A reader of ``row``'s content; nothing is fetched until it reads."""
        ...

    async def cached_bytes(self, generation: Generation, row: Row) -> int: ...

    async def with_size(self, generation: Generation, row: Row, batch_hint: bool) -> Row:
        """``row`` with its size known (``batch_hint``: its directory is being listed)."""
        ...


def digest_of(generation: Generation, row: Row) -> Digest:
    """The CAS key of an entry: the sha256 the origin vouches for, else its git blob id."""
    if row.sha256 is not None:
        return Digest(SHA256, row.sha256)
    assert row.oid is not None
    return Digest(generation.algorithm, row.oid)
