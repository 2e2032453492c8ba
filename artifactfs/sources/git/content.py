"""Git blobs as the operations read them: whole blobs, fetched into the CAS on first read
(batched and coalesced by ``fetching.BlobFetcher``) and verified before anything is served.
Sizes a server never told us are learned here too.

Every read is also a hint of what comes next (``ahead.FetchAhead``): the first miss in a
directory fetches its other small files, and a program walking the tree (``grep -r``, a build,
an indexer) has the directories ahead of it fetched in growing chunks
(``fetching.BlobFetcher.prefetch``). One round trip per file, then per directory, was most of
such a walk's time (docs/benchmarks.md, row 3).
"""

from __future__ import annotations

import errno
import logging
import os

import pyfuse3
import trio

from ...cas import ContentStore, Digest
from ...fetching import BlobFetcher, BlobUnavailable
from ...fs import attributes, local_reads
from ...fs.content import BlobReader, digest_of
from ...fs.generations import Generation
from ...snapshot import Row
from .ahead import FetchAhead

log = logging.getLogger(__name__)

SIZE_BATCH = 1000


class GitContent:
    def __init__(self, cas: ContentStore, fetcher: BlobFetcher) -> None:
        self._cas = cas
        self._fetcher = fetcher
        self._io = trio.CapacityLimiter(16)

    def open(self, generation: Generation, row: Row, kernel_inode: int) -> BlobReader:
        return _WholeBlob(self, generation, row)

    async def cached_bytes(self, generation: Generation, row: Row) -> int:
        if row.size == 0:
            return 0
        digest = digest_of(generation, row)
        size = await trio.to_thread.run_sync(self._cas.size_of, digest, limiter=self._io)
        return size or 0

    async def with_size(self, generation: Generation, row: Row, batch_hint: bool) -> Row:
        """Only servers without ``object-info`` leave sizes unknown: fetch the blob. When the
        directory is being listed (``ls -l``, ``find``), the blobs of every unknown-size
        sibling come in the same fetch: one round trip, not one per file."""
        if not attributes.size_unknown(row):
            return row
        index = generation.index
        batch = [row]
        if batch_hint:
            siblings = index.unknown_size_siblings(row)[:SIZE_BATCH]
            batch = [row, *(s for s in siblings if s.inode != row.inode)]
        try:
            await self._fetcher.ensure({s.oid: None for s in batch if s.oid})
        except BlobUnavailable as exc:
            try:  # a sibling may be what failed: this entry alone decides this answer
                await self._fetcher.ensure({row.oid: None} if row.oid else {})
            except BlobUnavailable:
                log.error("cannot learn the size of %s: %s", row.oid, exc)
                raise pyfuse3.FUSEError(errno.EIO) from None

        def sizes() -> dict[int, int]:
            found = {s.inode: self._cas.size_of(digest_of(generation, s)) for s in batch}
            return {inode: size for inode, size in found.items() if size is not None}

        index.record_sizes(await trio.to_thread.run_sync(sizes, limiter=self._io))
        return index.get(row.inode) or row

    async def open_fd(self, generation: Generation, row: Row) -> int:
        """A descriptor of ``row``'s verified blob, fetching it first if it is missing."""
        digest = digest_of(generation, row)
        try:
            fd, size = await self._open(digest)
            self._fetch_ahead(generation, row, missing=False)
        except FileNotFoundError:
            self._fetch_ahead(generation, row, missing=True)
            try:
                await self._fetcher.ensure({digest.hex: row.size})
            except BlobUnavailable as exc:
                log.error("read of %s failed: %s", row.oid, exc)
                raise pyfuse3.FUSEError(errno.EIO) from None
            fd, size = await self._open(digest)
        if row.size is not None and size != row.size:
            # The content is verified by its digest; the size the server announced was not.
            # The kernel holds the wrong size, so serving the true bytes would truncate them.
            os.close(fd)
            log.error(
                "the server said blob %s has %d bytes, but it has %d: refusing to serve it in"
                " this mount (the next mount will show the true size)",
                row.oid,
                row.size,
                size,
            )
            generation.index.record_sizes({row.inode: size})
            raise pyfuse3.FUSEError(errno.EIO)
        return fd

    def _fetch_ahead(self, generation: Generation, row: Row, missing: bool) -> None:
        ahead = generation.reading_hints
        if not isinstance(ahead, FetchAhead):
            ahead = generation.reading_hints = FetchAhead(generation.index, generation.listed)
        wanted = ahead.reading(row, missing)
        wanted.pop(row.oid or "", None)
        if wanted:
            self._fetcher.prefetch(wanted)

    async def _open(self, digest: Digest) -> tuple[int, int]:
        """A descriptor of a published blob and its size; FileNotFoundError if it is missing.
        On the loop when its path is all in the dentry cache, else in a thread."""
        fd = local_reads.open_cached(self._cas.path_of(digest))
        if fd is None:
            fd = await trio.to_thread.run_sync(self._cas.open_fd, digest, limiter=self._io)
        return fd, os.fstat(fd).st_size

    async def pread(self, fd: int, size: int, offset: int) -> bytes:
        return await local_reads.pread(fd, size, offset, self._io)


class _WholeBlob:
    def __init__(self, content: GitContent, generation: Generation, row: Row) -> None:
        self._content = content
        self._generation = generation
        self._row = row
        self._fd: int | None = None
        self._opening = trio.Lock()

    async def read(self, offset: int, size: int) -> bytes:
        known = self._row.size
        if known is not None and offset >= known:
            return b""  # at or past the end: nothing to fetch
        if self._fd is None:
            async with self._opening:
                if self._fd is None:
                    self._fd = await self._content.open_fd(self._generation, self._row)
        return await self._content.pread(self._fd, size, offset)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
