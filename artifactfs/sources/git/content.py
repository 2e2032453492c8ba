"""Git blobs as a mount reads them (``base.Content``): whole blobs, fetched into the CAS on
first read and verified before anything is served. Sizes a server never told us are learned
here too.

A cold read, hop by hop: ``_WholeBlob.read`` → ``GitContent.open_fd`` → on a miss
``fetcher.BlobFetcher.ensure`` (batched and coalesced with other misses) → in a thread
``remote.GitRemote.fetch_blobs`` (one pack) → ``cas.Publisher`` → the CAS file, read with
``cas.reads.pread``.

Every read is also a hint of what comes next (``walks.FetchAhead``, one per snapshot): the
first miss in a directory fetches its other small files, and a program walking the tree
(``grep -r``, a build, an indexer) has the directories ahead of it fetched in growing chunks.
One round trip per file, then per directory, was most of such a walk's time
(docs/benchmarks.md, row 3). Guesses of 64 blobs or more are fetched by child processes
(``fetch_process.py``), which have a GIL of their own.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import trio

from ...cas import Digest
from ...cas import reads as cas_reads
from ...cas.claims import FetchClaims
from ...errors import BlobUnavailable, IntegrityError, SourceError
from ...snapshot import Row, SnapshotIndex
from ..base import BlobReader, ContentHost
from .fetch_process import CHILDREN, FetchProcess
from .fetcher import BlobFetcher
from .remote import GitRemote
from .walks import FetchAhead

log = logging.getLogger(__name__)

SIZE_BATCH = 1000
LISTING_HINT_SECONDS = 5.0
"""A directory listed this recently is being stat-ed whole (``ls -l``, ``find``): learning an
unknown size then fetches its unknown-size siblings too."""


@dataclass
class _Hints:
    """What the reads of one snapshot have told us so far."""

    listed: set[int] = field(default_factory=set)
    """Directories (row inodes) a program has listed."""
    listed_at: dict[int, float] = field(default_factory=dict)
    """When directories were last listed (only while some sizes are unknown)."""
    ahead: FetchAhead | None = None


class GitContent:
    def __init__(self, remote: GitRemote, host: ContentHost) -> None:
        self._remote = remote
        self._cas = remote.cas
        self._fetcher = BlobFetcher(
            remote.fetch_blobs,
            self._present,
            claims=FetchClaims(self._cas.root),
            fetch_guesses=self._fetch_guesses,
            guess_batches=CHILDREN,
        )
        self._io = trio.CapacityLimiter(16)
        self._hints: dict[SnapshotIndex, _Hints] = {}
        self._process: FetchProcess | None = None
        self._process_lock = threading.Lock()
        self._closed = False

    # -- base.Content ---------------------------------------------------------------------------

    def reader(self, snapshot: SnapshotIndex, row: Row) -> BlobReader:
        return _WholeBlob(self, snapshot, row)

    async def cached_bytes(self, snapshot: SnapshotIndex, row: Row) -> int:
        if row.size == 0:
            return 0
        digest = snapshot.digest_of(row)
        size = await trio.to_thread.run_sync(self._cas.size_of, digest, limiter=self._io)
        return size or 0

    async def with_size(self, snapshot: SnapshotIndex, row: Row) -> Row:
        """Only servers without ``object-info`` leave sizes unknown: fetch the blob. When the
        directory is being listed (``ls -l``, ``find``), the blobs of every unknown-size
        sibling come in the same fetch: one round trip, not one per file."""
        if not row.size_unknown:
            return row
        batch = [row]
        if self._listed_recently(snapshot, row.parent):
            siblings = snapshot.unknown_size_siblings(row)[:SIZE_BATCH]
            batch = [row, *(s for s in siblings if s.inode != row.inode)]
        try:
            await self._fetcher.ensure({s.oid: None for s in batch if s.oid})
        except BlobUnavailable as exc:
            try:  # a sibling may be what failed: this entry alone decides this answer
                await self._fetcher.ensure({row.oid: None} if row.oid else {})
            except BlobUnavailable:
                raise BlobUnavailable(f"cannot learn the size of {row.oid}: {exc}") from None

        def sizes() -> dict[int, int]:
            found = {s.inode: self._cas.size_of(snapshot.digest_of(s)) for s in batch}
            return {inode: size for inode, size in found.items() if size is not None}

        snapshot.record_sizes(await trio.to_thread.run_sync(sizes, limiter=self._io))
        return snapshot.get(row.inode) or row

    def listed(self, snapshot: SnapshotIndex, directory: Row) -> None:
        hints = self._hints_of(snapshot)
        hints.listed.add(directory.inode)
        if snapshot.meta.sizes != "complete":
            hints.listed_at[directory.inode] = trio.current_time()

    def retired(self, snapshot: SnapshotIndex) -> None:
        self._hints.pop(snapshot, None)

    async def run(self) -> None:
        await self._fetcher.run()

    def close(self, reason: str) -> None:
        self._fetcher.close(reason)
        with self._process_lock:
            self._closed = True
            process = self._process
        if process is not None:
            process.close()

    # -- reading --------------------------------------------------------------------------------

    async def open_fd(self, snapshot: SnapshotIndex, row: Row) -> int:
        """A descriptor of ``row``'s verified blob, fetching it first if it is missing."""
        digest = snapshot.digest_of(row)
        try:
            fd, size = await self._open(digest)
            self._fetch_ahead(snapshot, row, missing=False)
        except FileNotFoundError:
            self._fetch_ahead(snapshot, row, missing=True)
            try:
                await self._fetcher.ensure({digest.hex: row.size})
            except BlobUnavailable as exc:
                raise BlobUnavailable(f"read of {row.oid} failed: {exc}") from None
            fd, size = await self._open(digest)
        if row.size is not None and size != row.size:
            # The content is verified by its digest; the size the server announced was not.
            # The kernel holds the wrong size, so serving the true bytes would truncate them.
            os.close(fd)
            snapshot.record_sizes({row.inode: size})
            raise IntegrityError(
                f"the server said blob {row.oid} has {row.size} bytes, but it has {size}:"
                " refusing to serve it in this mount (the next mount will show the true size)"
            )
        return fd

    async def pread(self, fd: int, size: int, offset: int) -> bytes:
        return await cas_reads.pread(fd, size, offset, self._io)

    async def _open(self, digest: Digest) -> tuple[int, int]:
        """A descriptor of a published blob and its size; FileNotFoundError if it is missing.
        On the loop when its path is all in the dentry cache, else in a thread."""
        fd = cas_reads.open_cached(self._cas.path_of(digest))
        if fd is None:
            fd = await trio.to_thread.run_sync(self._cas.open_fd, digest, limiter=self._io)
        return fd, os.fstat(fd).st_size

    # -- fetching ahead of need -----------------------------------------------------------------

    def _hints_of(self, snapshot: SnapshotIndex) -> _Hints:
        hints = self._hints.get(snapshot)
        if hints is None:
            hints = self._hints[snapshot] = _Hints()
        return hints

    def _listed_recently(self, snapshot: SnapshotIndex, directory: int) -> bool:
        hints = self._hints.get(snapshot)
        listed = hints.listed_at.get(directory) if hints is not None else None
        return listed is not None and trio.current_time() - listed < LISTING_HINT_SECONDS

    def _fetch_ahead(self, snapshot: SnapshotIndex, row: Row, missing: bool) -> None:
        hints = self._hints_of(snapshot)
        if hints.ahead is None:
            hints.ahead = FetchAhead(snapshot, hints.listed)
        wanted = hints.ahead.reading(row, missing)
        wanted.pop(row.oid or "", None)
        if wanted:
            self._fetcher.prefetch(wanted)

    def _present(self, oid: str) -> bool:
        """In a fetch thread: is this blob in the CAS already?"""
        return self._cas.contains(self._remote.blob_digest(oid))

    def _fetch_guesses(
        self, wanted: Mapping[str, int | None], published: Callable[[str], None]
    ) -> set[str]:
        """In a fetch thread: guessed blobs go to the fetch processes, made on first use."""
        with self._process_lock:
            if self._closed:
                raise SourceError("the mount is shutting down")
            if self._process is None:
                self._process = FetchProcess(self._remote)
            process = self._process
        return process.fetch(wanted, published)


class _WholeBlob:
    def __init__(self, content: GitContent, snapshot: SnapshotIndex, row: Row) -> None:
        self._content = content
        self._snapshot = snapshot
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
                    self._fd = await self._content.open_fd(self._snapshot, self._row)
        return await self._content.pread(self._fd, size, offset)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
