"""Serve reads of Hub files from partial blobs, fetching the ranges that are read.

- A read waits only for the blocks it covers. Blocks missing at the same moment go out as one
  range request per contiguous run (at most 8 MiB each); a block wanted by many readers is
  fetched once.
- What a reader gets fetched ahead of it is window.py's policy (a doubling window for
  sequential readers, stopped at tensor ends in safetensors files), fetched as parallel range
  requests; a random reader gets what it asks for, rounded to 256 KiB blocks. A block's
  readers wake as soon as that block is written, not when the whole range request ends.
- When every block is present the content is hashed and, only if it matches its digest,
  moved into the CAS. A mismatch throws the data away, logs it, makes the kernel drop any of it
  it cached, and refetches; a second mismatch gives up on the file (an ``IntegrityError``).
- Files that are not LFS (the Hub vouches only for their git blob id) are small: they are
  fetched whole and verified *before* a byte is served. LFS files are served by range as the
  issue asks, before the whole-file sha256 can be checked — the Hub offers no per-range digest
  over HTTP; TLS guards them in transit, and the check on completion guards what is kept.
- A read that cannot be served within ``io_timeout`` fails (``BlobUnavailable``) instead of
  hanging.
- With a shared tier (``tier_ranges.py``) each range is asked of the tier first when it holds
  the blob and its block list (looked up once per blob), every block checked before it is
  served; the rest of the range comes from the Hub if the tier fails, hangs or sends a bad
  block. Small files come from the tier whole and verified. A complete copy with tier bytes in
  it that still fails its digest is the tier's fault: no backoff, straight back to the Hub
  (``_mismatch`` says what a reader observes).
"""

from __future__ import annotations

import fcntl
import logging
import os
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ...cas import ContentStore, Digest, DigestMismatch
from ...cas import reads as cas_reads
from ...cas.partial import BLOCK, PartialBlob, blocks_in
from ...cas.store import VERIFY_ON_OPEN
from ...errors import BlobUnavailable, IntegrityError, NoSpace, SourceError, is_no_space
from ...snapshot import Row, SnapshotIndex
from .client import HubClient
from .layout import header_length, tensor_boundaries
from .tier_ranges import TierRanges
from .window import ReadAhead

log = logging.getLogger(__name__)

MAX_RANGE_BLOCKS = 32  # 8 MiB per request
PARALLEL_RANGES = 8
FLUSH_SECONDS = 2.0
MAX_MISMATCHES = 2
EVICTED_TRIES = 3
RETRY_SECONDS = (2.0, 10.0, 60.0, 300.0)
"""After ``MAX_MISMATCHES`` bad copies in a row a file fails (EIO) for this long, growing with
each time it happens again; then it is fetched afresh (the origin may have been repaired)."""


Entry = tuple[SnapshotIndex, Row]
"""An entry of a snapshot a mount serves: what the kernel may hold cached pages of."""
ForgetCached = Callable[[SnapshotIndex, Row], Awaitable[None]]


@dataclass(frozen=True)
class HubBlob:
    digest: Digest
    size: int
    url: str
    verify_first: bool
    """True for files the Hub vouches for only by git blob id: served only once verified."""
    safetensors: bool = False
    """Named like a safetensors file: learn its tensor layout once its header is here."""


@dataclass
class Cursor:
    """One open file's reading position, for read-ahead, and its descriptor."""

    ahead: ReadAhead = field(default_factory=ReadAhead)
    fd: int = -1
    fd_epoch: int = -1
    entry: Entry | None = None
    """The entry this file is open as (its pages are dropped if its bytes were bad)."""
    unverified: set[int] = field(default_factory=set)
    """Epochs of the partial whose bytes, not yet verified, this file was served."""
    held: bool = False
    """``fd`` is a published blob marked in use (``cas.reads.hold``): not evicted while open.
    A descriptor opened on a partial is protected by the partial's own lock until it is
    published, and held from its first read after that."""

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.held = False


@dataclass
class _State:
    blob: HubBlob
    partial: PartialBlob | None = None
    published: bool = False
    epoch: int = 0
    """Bumped when the partial is thrown away: descriptors of an older epoch are stale."""
    inflight: dict[int, trio.Event] = field(default_factory=dict)
    error: str | None = None
    no_space: bool = False
    """``error`` is a full store, not the origin: readers get ENOSPC."""
    mismatches: int = 0
    bad_epochs: set[int] = field(default_factory=set)
    """Epochs whose bytes turned out not to match the digest."""
    tier_epochs: set[int] = field(default_factory=set)
    """Epochs some of whose bytes came from the shared tier (a mismatch there is the tier's)."""
    failures: int = 0
    """How often it was given up on (``MAX_MISMATCHES`` in a row): the backoff grows."""
    retry_at: float = 0.0
    """Given up on until then (trio time), then fetched again: the origin may be repaired."""
    publishing: trio.Lock = field(default_factory=trio.Lock)
    boundaries: list[int] | None = None
    """Offsets where a safetensors file's tensors begin and end, once its header was read."""
    layout_known: bool = False
    lock: trio.Lock = field(default_factory=trio.Lock)
    entries: set[Entry] = field(default_factory=set)
    """Entries whose readers were served bytes of this blob."""
    readers: weakref.WeakValueDictionary[int, Cursor] = field(
        default_factory=weakref.WeakValueDictionary
    )
    """Open files reading the partial: marked in use (``Cursor.held``) once it is published."""


class RangedBlobs:
    def __init__(
        self,
        cas: ContentStore,
        client: Callable[[], HubClient],
        io_timeout: float,
        forget_cached: ForgetCached,
        offline: bool = False,
        take_local: Callable[[HubBlob], bool] | None = None,
        tier: TierRanges | None = None,
    ) -> None:
        self._cas = cas
        self._tier = tier
        """The shared tier, asked before the Hub for what the CAS lacks (tier_ranges.py)."""
        self._take_local = take_local
        """Blocking: publish a blob into the CAS from a copy found on this machine (the user's
        huggingface_hub cache, hf_cache.py), verified; False if there is none."""
        self._client = client
        self._client_made = False
        self._closed: str | None = None
        self._io_timeout = io_timeout
        self._forget_cached = forget_cached
        self._offline = offline
        self._states: dict[Digest, _State] = {}
        self._ranges = trio.CapacityLimiter(PARALLEL_RANGES)
        self._io = trio.CapacityLimiter(8)

    async def run(self) -> None:
        """Background work: fetches and flushes of partial maps. Runs until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._tier is not None:
                    self._tier.spawn = nursery.start_soon  # fetch leases (tier/leases.py)
                while True:
                    await trio.sleep(FLUSH_SECONDS)
                    await self._flush_all()
        finally:
            with trio.CancelScope(shield=True):
                await self._flush_all()
                if self._client_made:
                    await self._http().aclose()

    def _http(self) -> HubClient:
        self._client_made = True
        return self._client()

    def close(self, reason: str) -> None:
        """Fail every waiting and future read at once (the mount is going away)."""
        self._closed = reason
        for state in self._states.values():
            state.error = reason
            for event in state.inflight.values():
                event.set()

    def forget_snapshot(self, snapshot: SnapshotIndex) -> None:
        """``snapshot`` is no longer served: its entries need no pages dropped any more."""
        for state in self._states.values():
            state.entries = {entry for entry in state.entries if entry[0] is not snapshot}

    async def _flush_all(self) -> None:
        for state in list(self._states.values()):
            async with state.lock:  # the partial may change while we wait for the lock
                partial = state.partial
                if partial is None:
                    continue
                try:
                    await trio.to_thread.run_sync(partial.flush, limiter=self._io)
                except OSError as exc:  # a full disk costs refetches, never the mount
                    log.warning("could not save the progress of %s: %s", state.blob.digest, exc)
                if partial.persistent and self._cas.usage is not None:  # for the size cap
                    self._cas.usage.partial(state.blob.digest, partial.present_bytes())

    # -- reading ------------------------------------------------------------------------------

    async def read(
        self, blob: HubBlob, offset: int, size: int, cursor: Cursor, evicted: int = 0
    ) -> bytes:
        if self._closed is not None:
            raise BlobUnavailable(self._closed)
        state = await self._state(blob)
        if cursor.entry is not None:
            state.entries.add(cursor.entry)
        if cursor.unverified & state.bad_epochs:
            raise IntegrityError(
                f"{blob.url}: bytes this open file was served did not match {blob.digest}"
                " (open it again)"
            )
        if offset >= blob.size:
            return b""
        size = min(size, blob.size - offset)
        if state.published and cursor.fd >= 0 and cursor.fd_epoch == state.epoch:
            # kept in the CAS and open already: nothing to wait for (the common case)
            if not cursor.held:  # opened while partial: in use from now on
                cursor.held = _hold_fd(cursor.fd)
            return await cas_reads.pread(cursor.fd, size, offset, self._io)
        while True:
            with trio.move_on_after(self._io_timeout) as deadline:
                if blob.verify_first:
                    await self._whole(state)
                else:
                    first, last = offset // BLOCK, (offset + size - 1) // BLOCK
                    await self._blocks(state, first, last)
                    if blob.safetensors and not state.layout_known:
                        await self._learn_layout(state)
                    self._read_ahead(state, offset, size, cursor)
            if not deadline.cancelled_caught:
                break
            if self._tier is None or not self._tier.following(blob.digest):
                raise BlobUnavailable(f"{blob.url}: no answer within {self._io_timeout:.0f} s")
            # another node fetches this blob for the fleet and its lease lives: wait again
        try:
            await self._ensure_descriptor(state, cursor)
        except _Evicted:
            if evicted >= EVICTED_TRIES:
                raise BlobUnavailable(
                    f"{blob.url}: evicted from the store {evicted} times as soon as it was"
                    " fetched (is the cache's size cap far too small?)"
                ) from None
            return await self.read(blob, offset, size, cursor, evicted + 1)
        if not state.published:
            cursor.unverified.add(cursor.fd_epoch)
        return await cas_reads.pread(cursor.fd, size, offset, self._io)

    async def fetch_whole(self, blob: HubBlob) -> None:
        """Fetch all of ``blob``, verify it and keep it (``artifactfs prefetch``); raises what a
        read would."""
        if self._closed is not None:
            raise BlobUnavailable(self._closed)
        state = await self._state(blob)
        await self._whole(state)

    async def kept_file(self, blob: HubBlob) -> Path:
        """All of ``blob``, fetched if need be, verified and kept: its CAS file (what a
        workspace's copy-up clones, so no byte its digest did not vouch for reaches one)."""
        if blob.size == 0:  # no block to fetch: the empty content, checked like any other
            return await trio.to_thread.run_sync(self._cas.put_bytes, blob.digest, b"")
        await self.fetch_whole(blob)
        return self._cas.path_of(blob.digest)

    async def complete(self, blob: HubBlob) -> bool:
        """Whether the store holds all of ``blob`` (published, or of the right size: a damaged
        copy is found and set aside by the first read, as ever)."""
        state = self._states.get(blob.digest)
        if state is not None and (state.published or state.partial is not None):
            return state.published
        if blob.size == 0:
            return True
        size = await trio.to_thread.run_sync(self._cas.size_of, blob.digest, limiter=self._io)
        return size == blob.size

    async def cached_bytes(self, blob: HubBlob) -> int:
        state = self._states.get(blob.digest)
        if state is not None and state.partial is not None:
            return state.partial.present_bytes()
        if (state is not None and state.published) or await trio.to_thread.run_sync(
            self._cas.contains, blob.digest
        ):
            return blob.size
        # not read since this worker started: what an earlier one saved of it
        return await trio.to_thread.run_sync(
            PartialBlob.bytes_on_disk, self._cas.root, blob.digest, blob.size, limiter=self._io
        )

    async def _state(self, blob: HubBlob) -> _State:
        state = self._states.get(blob.digest)
        if state is not None and state.blob.url != blob.url:
            # the same content at another commit (a refresh): fetch it where that commit is
            # served from now (the old commit's URL may be gone); the partial goes on
            state.blob = blob
        if state is not None and (state.published or state.partial is not None):
            return state  # set up already: no lock to take on every read
        if state is None:
            state = self._states[blob.digest] = _State(blob)
            if await trio.to_thread.run_sync(self._intact, blob, limiter=self._io):
                state.published = True
        async with state.lock:
            if state.partial is None and not state.published and await self._taken(blob):
                state.published = True
            if state.partial is None and not state.published and await self._whole_from_tier(blob):
                state.published = True
            if state.partial is None and not state.published:
                state.partial = await trio.to_thread.run_sync(
                    PartialBlob.open, self._cas.root, blob.digest, blob.size
                )
                if state.partial.complete:  # finished before a crash, never published
                    self._nursery.start_soon(self._publish_in_background, state)
        return state

    def _intact(self, blob: HubBlob) -> bool:
        """Blocking: whether the CAS holds ``blob`` in a state fit to serve: its size right,
        and (up to ``VERIFY_ON_OPEN`` bytes) its content too, checked once per worker. A
        damaged copy is quarantined, and the blob fetched again as if it were not there."""
        size = self._cas.size_of(blob.digest)
        if size is None:
            return False
        if size == blob.size and size > VERIFY_ON_OPEN:
            return True
        if size == blob.size and self._cas.hash_published(blob.digest) == blob.digest.hex:
            return True
        where = self._cas.quarantine(blob.digest)
        log.error(
            "blob %s in the CAS is damaged (%d bytes, expected %d): moved to %s, fetching it again",
            blob.digest,
            size,
            blob.size,
            where,
        )
        return False

    async def _whole_from_tier(self, blob: HubBlob) -> bool:
        """Whether a small ``blob`` was just published from the shared tier, verified."""
        if (
            self._tier is None
            or self._offline
            or not TierRanges.whole(blob.size, blob.verify_first)
        ):
            return False
        return await self._tier.fetch_whole(blob.digest, blob.size)

    async def _taken(self, blob: HubBlob) -> bool:
        """Whether ``blob`` was just published from a copy on this machine (not fetched)."""
        if self._take_local is None:
            return False
        return await trio.to_thread.run_sync(self._take_local, blob, limiter=self._io)

    async def _ensure_descriptor(self, state: _State, cursor: Cursor) -> None:
        if cursor.fd >= 0 and cursor.fd_epoch == state.epoch:
            return
        cursor.close()
        for attempt in range(3):
            partial = state.partial
            published = state.published or partial is None
            path = (
                self._cas.path_of(state.blob.digest)
                if published or partial is None
                else partial.data_path
            )
            try:
                cursor.fd = await trio.to_thread.run_sync(_open_read, path)
            except FileNotFoundError:
                if state.published:
                    await self._fetch_again(state)
                    raise _Evicted from None
                if attempt == 2:
                    raise
                async with state.publishing:  # handed to the CAS meanwhile: let it finish
                    pass
                continue
            if not published:
                state.readers[id(cursor)] = cursor
            else:
                cursor.held = cas_reads.hold(cursor.fd, path)
                if not cursor.held and state.published:  # being evicted right now
                    cursor.close()
                    await self._fetch_again(state)
                    raise _Evicted
                self._cas.touched(state.blob.digest)
            break
        cursor.fd_epoch = state.epoch

    async def _fetch_again(self, state: _State) -> None:
        """The blob this worker kept was evicted from the store (cas/eviction.py): start a
        partial again, to be fetched like a blob never read."""
        async with state.lock:
            if not state.published:
                return  # another reader did it
            if await trio.to_thread.run_sync(self._intact, state.blob, limiter=self._io):
                return  # still there (the evictor looked at it, and let it be): open it again
            if await self._taken(state.blob):
                return  # a copy was found on this machine again
            log.info("%s was evicted from the store: fetching it again", state.blob.digest)
            state.published = False
            state.layout_known = False
            state.partial = await trio.to_thread.run_sync(
                PartialBlob.open, self._cas.root, state.blob.digest, state.blob.size
            )

    # -- fetching -----------------------------------------------------------------------------

    async def _whole(self, state: _State) -> None:
        """Fetch all of it, verify it, keep it; again after a mismatch, up to the limit."""
        while not state.published:
            await self._blocks(state, 0, blocks_in(state.blob.size) - 1)
            await self._publish(state)

    async def _blocks(self, state: _State, first: int, last: int) -> None:
        """Return once blocks ``first..last`` are present, fetching what is missing."""
        while not state.published:
            if state.mismatches >= MAX_MISMATCHES:
                if trio.current_time() < state.retry_at:
                    raise IntegrityError(state.error or "content does not match its digest")
                await self._start_over(state)  # time to try the origin again
                continue
            partial = state.partial
            if partial is None:  # thrown away a moment ago; its successor is on its way
                await trio.sleep(0.01)
                continue
            for event in self._request(state, first, last):
                await event.wait()
            if state.published or state.partial is not partial:
                continue  # kept meanwhile, or thrown away: look again
            if not partial.missing(first, last):
                return
            if state.error is not None:
                raise (NoSpace if state.no_space else BlobUnavailable)(state.error)
            # events of fetches from before a mismatch fire without data: ask again

    def _request(self, state: _State, first: int, last: int) -> list[trio.Event]:
        """Events for blocks ``first..last``: in flight already, or fetched from now on."""
        partial = state.partial
        waits: list[trio.Event] = []
        if partial is None:  # being thrown away after a mismatch: the caller looks again
            return waits
        run: list[int] = []  # contiguous missing blocks: one range request
        for block in range(first, last + 1):
            if partial.has(block):
                if run:
                    self._nursery.start_soon(self._fetch, state, run)
                    run = []
                continue
            event = state.inflight.get(block)
            if event is None:
                event = state.inflight[block] = trio.Event()
                run.append(block)
                if len(run) == MAX_RANGE_BLOCKS:
                    self._nursery.start_soon(self._fetch, state, run)
                    run = []
            elif run:
                self._nursery.start_soon(self._fetch, state, run)
                run = []
            waits.append(event)
        if run:
            self._nursery.start_soon(self._fetch, state, run)
        return waits

    async def _learn_layout(self, state: _State) -> None:
        """Parse a safetensors header if its bytes are here already (never fetch for it).
        Under the state's lock: the partial may be completed and handed to the CAS meanwhile."""
        async with state.lock:
            partial = state.partial
            if state.published or partial is None:
                state.layout_known = True  # whole and kept: read-ahead no longer matters
                return
            decided, header = await trio.to_thread.run_sync(
                _header_of, partial, state.blob.size, limiter=self._io
            )
        if header is not None:
            state.boundaries = tensor_boundaries(header, state.blob.size)
        state.layout_known = decided

    def _read_ahead(self, state: _State, offset: int, size: int, cursor: Cursor) -> None:
        """Fetch what the read-ahead policy (window.py) wants ahead of this reader."""
        wanted = cursor.ahead.after_read(offset, size, state.blob.size, state.boundaries)
        if wanted is not None and not state.published and state.partial is not None:
            start, end = wanted
            self._request(state, start // BLOCK, (end - 1) // BLOCK)

    async def _fetch(self, state: _State, blocks: list[int]) -> None:
        try:
            await self._fetch_blocks(state, blocks)
        except Exception as exc:  # this must cost this fetch (its readers fail), not the mount
            if is_no_space(exc):  # the bytes came, but the store cannot keep them
                state.error, state.no_space = "no space left in the store's file system", True
                log.error("fetching %s failed: %s", state.blob.digest, state.error)
            else:
                log.exception("fetching %s failed", state.blob.digest)
                state.error = "internal error (see the log)"

    async def _fetch_blocks(self, state: _State, blocks: list[int]) -> None:
        blob = state.blob
        start = blocks[0] * BLOCK
        end = min((blocks[-1] + 1) * BLOCK, blob.size)
        epoch = state.epoch
        writer = _AlignedWriter(self, state, epoch)
        try:
            if self._offline:
                raise SourceError(f"{blob.url}: offline, and these bytes are not stored")
            from_tier = await self._tier_holds(blob)  # a wait on a lease holds no range slot
            async with self._ranges:
                position = start
                if from_tier:
                    assert self._tier is not None
                    state.tier_epochs.add(epoch)  # before a byte is written: a mismatch is
                    position = await self._tier.fetch(  # then the tier's
                        blob.digest, start, end, writer.deliver
                    )
                if position < end:  # no tier, or it failed on the way: the Hub gives the rest
                    if self._tier is not None:
                        self._tier.fetching(blob.digest)
                    await writer.finish()
                    await self._http().fetch(blob.url, position, end, blob.size, writer.deliver)
            await writer.finish()
            if state.epoch == epoch:
                state.error, state.no_space = None, False  # what failed before worked now
        except SourceError as exc:
            state.error, state.no_space = str(exc), is_no_space(exc)
            log.error("fetching %s bytes %d-%d failed: %s", blob.digest, start, end, exc)
        finally:
            for block in blocks:
                event = state.inflight.pop(block, None)
                if event is not None:
                    event.set()
        partial = state.partial
        if partial is not None and partial.complete and not state.blob.verify_first:
            self._nursery.start_soon(self._publish_in_background, state)

    async def _tier_holds(self, blob: HubBlob) -> bool:
        """Whether ``blob``'s ranges are to be read from the shared tier (which may first wait
        on another node's fetch lease: never while holding a range slot)."""
        tier = self._tier
        if tier is None or TierRanges.whole(blob.size, blob.verify_first):
            return False
        return await tier.holds(blob.digest, blob.size)

    async def _publish_in_background(self, state: _State) -> None:
        try:
            await self._publish(state)
        except Exception:  # an unexpected failure costs this blob its keeping, not the mount
            log.exception("keeping %s failed", state.blob.digest)
            state.error = "internal error (see the log)"

    async def _write(
        self, state: _State, epoch: int, offset: int, data: Sequence[memoryview]
    ) -> None:
        async with state.lock:
            partial = state.partial
            if partial is None or state.epoch != epoch or partial.closed:
                return  # thrown away, or complete and being verified: nothing to add
            await trio.to_thread.run_sync(partial.write, offset, data, limiter=self._io)
        if state.partial is partial:  # wake the readers of the blocks now present
            end = offset + sum(len(piece) for piece in data)
            for block in range(offset // BLOCK, (end - 1) // BLOCK + 1):
                if partial.has(block) and (event := state.inflight.pop(block, None)) is not None:
                    event.set()

    async def _publish(self, state: _State) -> None:
        """Verify the complete partial and move it into the CAS; on a mismatch, start over.
        Concurrent callers wait for the one doing it."""
        async with state.publishing:
            async with state.lock:
                partial = state.partial
                if state.published or partial is None or not partial.complete:
                    return
                path = await trio.to_thread.run_sync(partial.detach_file, limiter=self._io)
                # in use, never evicted while open: the readers' descriptors are of the data
                # file the CAS renames into place (the same inode), so they are marked before
                # it is published; marked after, an eviction could slip in between
                for cursor in list(state.readers.values()):
                    if cursor.fd >= 0 and cursor.fd_epoch == state.epoch and not cursor.held:
                        cursor.held = _hold_fd(cursor.fd)
            try:
                await trio.to_thread.run_sync(self._cas.adopt, state.blob.digest, path)
            except DigestMismatch as exc:
                await self._mismatch(state, exc)
                return
            state.partial = None
            state.published = True
            state.error = None
            state.readers.clear()
            log.info("verified and kept %s (%d bytes)", state.blob.digest, state.blob.size)
            blob = state.blob
            if self._tier is not None and not TierRanges.whole(blob.size, blob.verify_first):
                # its block list up to the tier, or noted as held if it came from there
                self._nursery.start_soon(
                    self._tier.kept, blob.digest, blob.size, self._cas.path_of(blob.digest)
                )

    async def _start_over(self, state: _State) -> None:
        """A file given up on is fetched again from scratch (its backoff has passed)."""
        async with state.lock:
            if state.mismatches < MAX_MISMATCHES:
                return  # another reader did it meanwhile
            log.info("fetching %s again", state.blob.digest)
            if state.partial is None:
                state.partial = await trio.to_thread.run_sync(
                    PartialBlob.open, self._cas.root, state.blob.digest, state.blob.size
                )
            state.mismatches = MAX_MISMATCHES - 1  # one more attempt, then the next backoff
            state.error = None

    async def _mismatch(self, state: _State, exc: DigestMismatch) -> None:
        """Throw the bad copy away and fetch again (or give up for a while, see
        ``RETRY_SECONDS``).

        Bytes from the shared tier are checked block by block before they are served
        (tier_ranges.py): a damaged tier object costs its readers a wait for the Hub's bytes,
        never an error. If a complete copy with tier bytes in it still fails its digest (the
        block list and the object were damaged alike, or rewritten on purpose), that is the
        tier's fault too: it is reported (one ERROR) and not asked for the blob again, the
        mismatch is not counted and nothing backs off, the blob is fetched again from the Hub
        at once. What a reader observes then: a read waiting for blocks waits on (the Hub fills
        them); an open file that was served bytes of the bad copy fails its next read with EIO
        (``IntegrityError``: it may have been given wrong bytes; opened again, it reads the
        Hub's); the kernel drops the pages it cached of the file. (A copy with bytes of both
        in it is blamed on the tier: wrongly if the Hub's were the bad ones, which costs one
        more fetch, from the Hub alone, whose mismatch is then counted as ever.)
        """
        from_tier = self._tier is not None and state.epoch in state.tier_epochs
        if from_tier:
            assert self._tier is not None
            self._tier.damaged(state.blob.digest, f"got sha {exc.actual_hex}")
        else:
            state.mismatches += 1
            state.error = f"the content of {state.blob.url} does not match {state.blob.digest}"
            log.error("%s (got %s): thrown away", state.error, exc.actual_hex)
        state.bad_epochs.add(state.epoch)
        state.epoch += 1
        state.partial = None
        if not from_tier and state.mismatches >= MAX_MISMATCHES:
            delay = RETRY_SECONDS[min(state.failures, len(RETRY_SECONDS) - 1)]
            state.failures += 1
            state.retry_at = trio.current_time() + delay
            log.error("giving up on %s for %.0f s", state.blob.digest, delay)
        if state.mismatches < MAX_MISMATCHES:
            state.partial = await trio.to_thread.run_sync(
                PartialBlob.open, self._cas.root, state.blob.digest, state.blob.size
            )
        if not state.blob.verify_first:
            # Bytes of it were served: make the kernel drop the pages it cached. Readers must
            # be able to go on meanwhile (a page locked by a read in progress holds this up),
            # hence after the new partial is in place; and never from a read handler.
            for snapshot, row in list(state.entries):
                await self._forget_cached(snapshot, row)
        if state.partial is not None:
            log.info("%s will be fetched again", state.blob.digest)


class _AlignedWriter:
    """Collects delivered bytes into block-aligned writes (a block counts only when whole).

    The chunks are kept as they came and written with one ``pwritev``: no byte is copied in
    Python on its way to the partial (this is the path every byte of a large file takes)."""

    FLUSH = 1 << 20

    def __init__(self, owner: RangedBlobs, state: _State, epoch: int) -> None:
        self._owner = owner
        self._state = state
        self._epoch = epoch
        self._start = 0
        self._chunks: list[memoryview] = []
        self._length = 0

    async def deliver(self, offset: int, chunk: bytes) -> None:
        if self._chunks and offset != self._start + self._length:
            await self._flush(final=False)  # the server started over (an ignored Range)
            self._chunks, self._length = [], 0
        if not self._chunks:
            self._start = offset
        self._chunks.append(memoryview(chunk))
        self._length += len(chunk)
        if self._length >= self.FLUSH:
            await self._flush(final=False)

    async def finish(self) -> None:
        await self._flush(final=True)

    async def _flush(self, final: bool) -> None:
        end = self._start + self._length
        size = self._state.blob.size
        cut = self._length if final or end == size else end - end % BLOCK - self._start
        if cut <= 0:
            return
        out, kept, taken = [], [], 0
        for chunk in self._chunks:
            if taken + len(chunk) <= cut:
                out.append(chunk)
            elif taken >= cut:
                kept.append(chunk)
            else:
                out.append(chunk[: cut - taken])
                kept.append(chunk[cut - taken :])
            taken += len(chunk)
        self._chunks, self._length = kept, self._length - cut
        await self._owner._write(self._state, self._epoch, self._start, out)
        self._start += cut


def _header_of(partial: PartialBlob, size: int) -> tuple[bool, bytes | None]:
    """(decided, header) of a safetensors file from what the partial holds: not decided while
    the header's bytes are not all here; decided without a header if it cannot be one."""
    if not partial.has(0):
        return False, None
    length = header_length(partial.read(0, 8), size)
    if length is None:
        return True, None
    if partial.missing(0, (8 + length - 1) // BLOCK):
        return False, None  # a header longer than what was read so far: look again later
    return True, partial.read(8, length)


class _Evicted(Exception):
    """The published blob a reader was about to open was evicted: read again (refetching)."""


def _hold_fd(fd: int) -> bool:
    """Mark an already open published blob in use (see ``cas.reads.hold``; the path is not
    checked again: if it was evicted meanwhile, this descriptor still reads the right bytes)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _open_read(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
