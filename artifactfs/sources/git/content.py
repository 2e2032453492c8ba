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

With a shared tier (``SourceSettings.tier``), every batch of misses is asked of the tier
first (``_from_tier``: parallel, bounded, verified on adoption); what it lacks goes to the
origin as above, and is uploaded behind the reader by the mount's write-behind task.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ...cas import Digest
from ...cas import reads as cas_reads
from ...cas.claims import FetchClaims
from ...cas.store import VERIFY_ON_OPEN
from ...cas.upkeep import FLUSH_SECONDS
from ...errors import BlobUnavailable, IntegrityError, ReadError, SourceError
from ...snapshot import Row, SnapshotIndex
from ..base import BlobReader, ContentHost
from .fetch_process import CHILDREN, FetchProcess
from .fetcher import BlobFetcher
from .remote import GitRemote
from .walks import FetchAhead

log = logging.getLogger(__name__)

SIZE_BATCH = 1000
EVICTED_TRIES = 3
HASH_ON_LOOP = 64 << 10
"""Up to this size a file is read and hashed on the trio thread (tens of microseconds)."""
TIER_PROBE = 8
"""A batch of misses asks the tier for this many blobs first, and for the rest only if it had
some: a tier that has none of a repository (the first node of a fleet) costs one round of
requests per batch, not one request per blob of a 4,096-blob guess before the origin's pack."""
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
            from_tier=self._from_tier if remote.settings.tier is not None else None,
            from_origin=self._from_origin,
        )
        self._io = trio.CapacityLimiter(16)
        self._hints: dict[SnapshotIndex, _Hints] = {}
        self._process: FetchProcess | None = None
        self._process_lock = threading.Lock()
        self._closed = False
        self._origin_published = trio.Event()
        self._verified: set[str] = set()
        """Blobs whose CAS file this worker has hashed (kept for the worker's life)."""

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

        def set_aside_damaged() -> None:
            """A size is never learned from an unchecked file: copies already in the CAS are
            hashed first, and a damaged one is quarantined (so it is fetched below)."""
            for sibling in batch:
                digest = snapshot.digest_of(sibling)
                actual = self._cas.hash_published(digest)
                if actual == digest.hex:
                    self._verified.add(digest.hex)
                elif actual is not None:
                    where = self._cas.quarantine(digest)
                    log.error("blob %s in the CAS is damaged: moved to %s", digest, where)

        await trio.to_thread.run_sync(set_aside_damaged, limiter=self._io)
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

    async def fetch(self, snapshot: SnapshotIndex, rows: list[Row]) -> list[Row]:
        """Asked for as guesses (fetch_process.py: packs of up to 4,096 blobs, in child
        processes, behind every reader's demand), in the order given; what a failed guess
        batch lost is asked for again as demands (one failing blob fails a whole pack). What
        is still missing then failed. Blobs present are not asked for."""
        blobs = [row for row in rows if row.oid and row.size != 0]

        def missing() -> list[Row]:
            return [row for row in blobs if not self._cas.contains(snapshot.digest_of(row))]

        wanted = await trio.to_thread.run_sync(missing, limiter=self._io)
        if wanted and self._remote.settings.offline:  # the tier is no origin: it is asked
            if self._remote.settings.tier is not None:
                await self._from_tier({row.oid: row.size for row in wanted if row.oid})
                wanted = await trio.to_thread.run_sync(missing, limiter=self._io)
            return wanted
        if not wanted:
            return wanted
        sizes = {row.oid: row.size for row in wanted if row.oid}
        self._fetcher.prefetch(sizes)
        await self._fetcher.settle(sizes)
        wanted = await trio.to_thread.run_sync(missing, limiter=self._io)
        if wanted:
            try:
                await self._fetcher.ensure({row.oid: row.size for row in wanted if row.oid})
            except ReadError as exc:  # that batch failed; the others may have landed
                log.error("prefetch: %s", exc)
            wanted = await trio.to_thread.run_sync(missing, limiter=self._io)
        return wanted

    async def local_path(self, snapshot: SnapshotIndex, row: Row) -> Path:
        """The blob's CAS file, fetched and checked as an open for reading does, but no hint
        of what comes next: a copy-up is an edit, not a walker's read (an agent's edits after
        a ``git status`` would otherwise fetch ahead through every directory git listed, beside
        its next status)."""
        fd, _ = await self.open_fd(snapshot, row, fetch_ahead=False)
        os.close(fd)
        return self._cas.path_of(snapshot.digest_of(row))

    def listed(self, snapshot: SnapshotIndex, directory: Row) -> None:
        hints = self._hints_of(snapshot)
        hints.listed.add(directory.inode)
        if snapshot.meta.sizes != "complete":
            hints.listed_at[directory.inode] = trio.current_time()

    def retired(self, snapshot: SnapshotIndex) -> None:
        self._hints.pop(snapshot, None)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._fetcher.run)
            if self._remote.settings.tier is not None:
                nursery.start_soon(self._wake_uploads)

    def close(self, reason: str) -> None:
        self._fetcher.close(reason)
        with self._process_lock:
            self._closed = True
            process = self._process
        if process is not None:
            process.close()

    # -- reading --------------------------------------------------------------------------------

    async def open_fd(
        self, snapshot: SnapshotIndex, row: Row, fetch_ahead: bool = True
    ) -> tuple[int, bytes | None]:
        """A descriptor of ``row``'s blob, checked (see ``_checked``), fetching it first if it
        is missing, and again if the copy in the CAS turns out to be damaged; and the whole
        content when checking it read it on the loop (a small file: reads are served from
        that, not read again). The open is a hint of what comes next unless ``fetch_ahead``
        is false."""
        digest = snapshot.digest_of(row)
        for attempt in range(2):
            try:
                fd, size = await self._open(digest)
                if attempt == 0 and fetch_ahead:
                    self._fetch_ahead(snapshot, row, missing=False)
            except FileNotFoundError:
                if attempt == 0 and fetch_ahead:
                    self._fetch_ahead(snapshot, row, missing=True)
                fd, size = await self._fetch_and_open(row, digest)
            try:
                intact, content = await self._checked(snapshot, row, digest, fd, size)
                if intact:
                    return fd, content
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            where = await trio.to_thread.run_sync(self._cas.quarantine, digest, limiter=self._io)
            log.error(
                "blob %s in the CAS is damaged (%d bytes, expected %s): moved to %s, fetching"
                " it again",
                digest,
                size,
                row.size if row.size is not None else "unknown",
                where,
            )
        raise IntegrityError(f"blob {row.oid} was damaged again right after it was fetched")

    async def _fetch_and_open(self, row: Row, digest: Digest) -> tuple[int, int]:
        """Fetch a missing blob and open it. A blob can be evicted between its fetch and our
        open when the store's cap is tiny next to what is being read (cas/eviction.py): it is
        fetched again, a few times, before the read fails."""
        for _ in range(EVICTED_TRIES):
            try:
                await self._fetcher.ensure({digest.hex: row.size})
            except ReadError as exc:  # of its kind: a full store stays ENOSPC
                raise type(exc)(f"read of {row.oid} failed: {exc}") from None
            with contextlib.suppress(FileNotFoundError):
                return await self._open(digest)
        raise BlobUnavailable(
            f"read of {row.oid} failed: evicted from the store {EVICTED_TRIES} times as soon as"
            " it was fetched (is the cache's size cap far too small?)"
        )

    async def _checked(
        self, snapshot: SnapshotIndex, row: Row, digest: Digest, fd: int, size: int
    ) -> tuple[bool, bytes | None]:
        """Whether the CAS file of ``row`` may be served. Small blobs (up to
        ``VERIFY_ON_OPEN``) are hashed on their first open in this worker, and any blob whose
        size differs from the snapshot's: False if the file does not hash to its digest (local
        damage: heal it). A file that does but has another size than the server announced is
        refused (``IntegrityError``: the kernel holds the wrong size, so the true bytes could
        not be served whole); its verified size is stored for the next mount. Also returns
        the content when it was read whole to be hashed."""
        wrong_size = row.size is not None and size != row.size
        if not wrong_size and (digest.hex in self._verified or size > VERIFY_ON_OPEN):
            return True, None
        intact, content = await self._hashes_right(digest, fd, size)
        if not intact:
            return False, None
        self._verified.add(digest.hex)
        if wrong_size:
            snapshot.record_sizes({row.inode: size})
            raise IntegrityError(
                f"the server said blob {row.oid} has {row.size} bytes, but it has {size}:"
                " refusing to serve it in this mount (the next mount will show the true size)"
            )
        return True, content

    async def _hashes_right(self, digest: Digest, fd: int, size: int) -> tuple[bool, bytes | None]:
        """Hash the open CAS file: on the loop when it is small and in the page cache (a
        walker's files, just fetched; the bytes read are returned too), else in a thread."""
        if size <= HASH_ON_LOOP:
            data = bytes(await cas_reads.pread(fd, size, 0, self._io))
            hasher = digest.algorithm.new_hasher(len(data))
            hasher.update(data)
            intact = len(data) == size and hasher.hexdigest() == digest.hex
            return intact, data if intact else None
        intact = await trio.to_thread.run_sync(_hash_matches, digest, fd, size, limiter=self._io)
        return intact, None

    def closed(self, snapshot: SnapshotIndex, row: Row) -> None:
        """An open file of this blob was closed: it was in use until now (the LRU order)."""
        with contextlib.suppress(ValueError):
            self._cas.touched(snapshot.digest_of(row))

    async def pread(self, fd: int, size: int, offset: int) -> bytes:
        return await cas_reads.pread(fd, size, offset, self._io)

    async def _open(self, digest: Digest) -> tuple[int, int]:
        """A descriptor of a published blob and its size; FileNotFoundError if it is missing.
        On the loop when its path is all in the dentry cache, else in a thread."""
        path = self._cas.path_of(digest)
        fd = cas_reads.open_cached(path)
        if fd is None:
            fd = await trio.to_thread.run_sync(self._cas.open_fd, digest, limiter=self._io)
        if not cas_reads.hold(fd, path):  # being evicted: as good as missing
            os.close(fd)
            raise FileNotFoundError(path)
        self._cas.touched(digest)
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
        if self._remote.settings.offline:
            return  # nothing is fetched at all
        hints = self._hints_of(snapshot)
        if hints.ahead is None:
            hints.ahead = FetchAhead(snapshot, hints.listed)
        wanted = hints.ahead.reading(row, missing)
        wanted.pop(row.oid or "", None)
        if wanted:
            self._fetcher.prefetch(wanted)

    async def _from_tier(self, wanted: Mapping[str, int | None]) -> set[str]:
        """Those of ``wanted`` the shared tier gave (published, verified), skipping what is
        in the CAS already (another process may have published it meanwhile)."""
        tier = self._remote.settings.tier
        if tier is None:
            return set()
        digests = {self._remote.blob_digest(oid): oid for oid in wanted}

        def missing() -> list[Digest]:
            return [digest for digest in digests if not self._cas.contains(digest)]

        asked = await trio.to_thread.run_sync(missing, limiter=self._io)
        sizes = {digest: wanted[oid] for digest, oid in digests.items()}
        found = await tier.fetch_many(self._cas, asked[:TIER_PROBE], sizes)  # recorded too
        if found and len(asked) > TIER_PROBE:
            found |= await tier.fetch_many(self._cas, asked[TIER_PROBE:], sizes)
        return {digests[digest] for digest in found}

    def _from_origin(self) -> None:
        """The origin published blobs (trio thread): see ``_wake_uploads``."""
        self._origin_published.set()

    async def _wake_uploads(self) -> None:
        """The tier's uploader reads its backlog from the store's table, which the upkeep
        task writes every ``FLUSH_SECONDS``: it is woken once that has happened after the
        origin published something, not at once (it would find nothing new and sleep its
        whole idle round)."""
        tier = self._remote.settings.tier
        assert tier is not None
        while True:
            await self._origin_published.wait()
            self._origin_published = trio.Event()
            await trio.sleep(FLUSH_SECONDS + 0.5)
            tier.uploaded_later()

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
        usage = self._cas.usage
        if usage is None:
            return process.fetch(wanted, published)

        def recorded(oid: str) -> None:  # a child published it: record it for the cap here
            usage.published(self._remote.blob_digest(oid), None)
            published(oid)

        return process.fetch(wanted, recorded)


def _hash_matches(digest: Digest, fd: int, size: int) -> bool:
    hasher = digest.algorithm.new_hasher(size)
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(1 << 20, size - offset), offset)
        if not chunk:
            return False
        hasher.update(chunk)
        offset += len(chunk)
    return hasher.hexdigest() == digest.hex


class _WholeBlob:
    def __init__(self, content: GitContent, snapshot: SnapshotIndex, row: Row) -> None:
        self._content = content
        self._snapshot = snapshot
        self._row = row
        self._fd: int | None = None
        self._verified: bytes | None = None
        """The whole content, when checking it on open read it (small files only)."""
        self._opening = trio.Lock()

    async def read(self, offset: int, size: int) -> bytes:
        known = self._row.size
        if known is not None and offset >= known:
            return b""  # at or past the end: nothing to fetch
        if self._fd is None:
            async with self._opening:
                if self._fd is None:
                    self._fd, self._verified = await self._content.open_fd(
                        self._snapshot, self._row
                    )
        if self._verified is not None:
            return self._verified[offset : offset + size]
        return await self._content.pread(self._fd, size, offset)

    async def complete(self) -> bool:
        if self._fd is not None or not self._row.size:
            return True
        return await self._content.cached_bytes(self._snapshot, self._row) == self._row.size

    def close(self) -> None:
        self._verified = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._content.closed(self._snapshot, self._row)
