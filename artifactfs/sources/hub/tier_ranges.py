"""The shared tier as a second place to read a Hub file's ranges from, before the Hub itself.

ranged.py asks for the same ranges, with the same read-ahead and parallelism, whatever answers
them; this module only decides whether the tier can, and fetches from it:

- ``holds``: whether the tier has the blob's object *and its block list* (below), asked once
  per blob (a HEAD and a GET, bounded by ``tier.timeout``) and remembered for the worker's
  life; a "no" is asked again after ``RECHECK_SECONDS`` while the blob is still being read (a
  node that started alongside another switches to the tier once the other's upload is in). An
  object of the wrong size, or a block list that does not describe this blob, is damaged
  (reported once, never used).
- ``fetch``: bytes ``[start, end)`` by ranged GETs in worker threads (never on the trio loop),
  each bounded by ``tier.timeout``, delivered piece by piece (``PIECE``) so a block's readers
  wake when it is here. An error or a hang stops it early: the tier is left alone for a while
  (``TierReads.went_down``) and the caller asks the Hub for the rest, so a tier that fails
  mid-file costs at most one bounded wait per range in flight.
- ``fetch_whole``: small files (and the non-LFS files the Hub vouches for only by git blob id)
  are taken whole through ``TierReads.fetch``, verified before a byte is served.

Why block lists: a range of a blob cannot be checked against the blob's sha256 until the whole
blob is here, and a range the Hub sends is served unverified on the strength of TLS and of the
Hub itself. The tier is a bucket many nodes write to, with no such standing: its bytes are
served only once checked. So whoever publishes a Hub file (verified whole, from the Hub or the
tier) also puts, create-only, ``blocks/<algorithm>/<2 hex>/<hex>``: a header naming the blob
and its size, then the sha256 of each 256 KiB block (128 KiB of list for 1 GiB). A node reading
from the tier checks every block against it in the thread that fetched it; a block that fails
is reported (ERROR, once), the tier is not asked for that blob again, and the Hub gives the rest
of the range: the reader waits a little longer and gets the right bytes, never an error. The
list is no stronger than the bucket against someone who rewrites both on purpose; the whole-file
digest is still checked when the blob is complete (ranged.py ``_mismatch``). A blob whose list is
missing (uploaded by ``artifactfs tier push``, or its list's upload failed) is read from the Hub
by range, and its list is written once it is kept.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ...cas import ContentStore, Digest
from ...cas.partial import BLOCK, blocks_in
from ...tier import leases
from ...tier.keys import blob_key
from ...tier.objects import TierError

if TYPE_CHECKING:
    from ...tier.access import TierAccess
    from ...tier.objects import ObjectStore
    from ...tier.read_through import TierReads

log = logging.getLogger(__name__)

PIECE = 8 * BLOCK
"""Bytes per ranged GET: a range request of ranged.py (up to 8 MiB) is split so its first
blocks are served before its last ones have come."""
WHOLE_MAX = 8 << 20
"""Files up to this size come from the tier whole and verified, never by ranges."""
THREADS = 16
"""Tier requests in flight at once (ranged.py asks for at most 8 ranges at a time; a thread
abandoned on a hung tier keeps its slot until the client's own timeout ends it)."""
RECHECK_SECONDS = 15.0
"""How long "the tier does not have it" is believed before the tier is asked again."""
POLL_SECONDS = 1.0
"""How often a node waiting on another's fetch lease looks for the blob in the tier."""
FOLLOW_SECONDS = 900.0
"""The longest a node waits on other nodes' leases for one blob before it fetches it itself."""
IDLE_SECONDS = 4.0
"""A lease is given up (left to go stale) when its holder fetched nothing of the blob for this
long and has not kept it: a reader that wanted one tensor does not make the fleet wait."""
UPLOAD_WAIT_SECONDS = 300.0
"""How long a kept blob's lease is held for its upload by the write-behind."""
T = TypeVar("T")


class _TierGone(Exception):
    """A lease request failed or hung: the tier is left alone (``went_down``)."""


@dataclass
class _Leading:
    """A blob this node holds the fetch lease of."""

    lease: leases.Lease
    active_at: float
    kept_at: float | None = None


_DIGEST_SIZE = 32

Deliver = Callable[[int, bytes], Awaitable[None]]


def blocks_key(digest: Digest) -> str:
    """Where the tier keeps ``digest``'s block list (beside ``blobs/``, never inside it)."""
    return "blocks/" + blob_key(digest).removeprefix("blobs/")


def _header(digest: Digest, size: int) -> bytes:
    return f"artifactfs-blocks 1 {digest} {size} {BLOCK}\n".encode()


def block_list(digest: Digest, size: int, path: Path) -> bytes:
    """Blocking: the block list of the published file ``path`` (hashes it again)."""
    parts = [_header(digest, size)]
    with open(path, "rb") as source:
        while block := source.read(BLOCK):
            parts.append(hashlib.sha256(block).digest())
    return b"".join(parts)


def parse_block_list(data: bytes, digest: Digest, size: int) -> bytes | None:
    """The block digests, end to end (32 bytes each), if ``data`` is the block list of this
    blob, else None. Kept as one bytes object: 128 KiB for 1 GiB, not a Python object a block."""
    header = _header(digest, size)
    body = data[len(header) :]
    if not data.startswith(header) or len(body) != blocks_in(size) * _DIGEST_SIZE:
        return None
    return body


class _BadBlock(Exception):
    def __init__(self, good: bytes, offset: int) -> None:
        super().__init__(f"block at byte {offset} does not match its block list")
        self.good = good
        """The checked bytes before the bad block."""


def _get_checked(store: ObjectStore, key: str, start: int, length: int, blocks: bytes) -> bytes:
    """Blocking: ``length`` bytes at ``start`` (block-aligned), each block checked."""
    data = store.get_range(key, start, length)
    if len(data) != length:
        raise _BadBlock(b"", start)
    view = memoryview(data)
    for at in range(0, length, BLOCK):
        index = (start + at) // BLOCK * _DIGEST_SIZE
        if hashlib.sha256(view[at : at + BLOCK]).digest() != blocks[index : index + _DIGEST_SIZE]:
            raise _BadBlock(data[:at], start + at)
    return data


class TierRanges:
    def __init__(self, tier: TierAccess, cas: ContentStore) -> None:
        self._tier = tier
        self._cas = cas
        self._reads: TierReads | None = None
        self._unusable = False
        self._blocks: dict[Digest, bytes | None] = {}
        """What the tier was found to hold: a blob's block list, or None (not usable)."""
        self._recheck_at: dict[Digest, float] = {}
        """When a blob the tier did not have is worth asking about again (trio time)."""
        self._asking: dict[Digest, trio.Event] = {}
        self._threads = trio.CapacityLimiter(THREADS)
        self._hashing = trio.CapacityLimiter(1)
        self.bytes_read = 0
        self._owner = leases.owner_name()
        self._leading: dict[Digest, _Leading] = {}
        self._following: set[Digest] = set()
        self._given_up: dict[Digest, str] = {}
        """The last ETag of leases this node let go stale: its own, taken back without a wait."""
        self.spawn: Callable[..., Any] | None = None
        """Starts a background task (ranged.py's nursery's ``start_soon``): with it, a node
        takes fetch leases (``tier/leases.py``) and keeps them renewed; without, it takes none
        and never waits on others'."""

    async def _open(self) -> TierReads | None:
        """The tier's read state, opened once in a thread (the store's client, the ledger)."""
        if self._reads is None and not self._unusable:
            try:
                self._reads = await trio.to_thread.run_sync(lambda: self._tier.reads)
            except Exception as exc:  # noqa: BLE001 - a tier that cannot be opened is not used
                self._unusable = True
                # the error's text may echo the client's configuration: its kind only
                log.warning(
                    "the tier %s cannot be used (%s); the origin is used instead",
                    self._tier.description,
                    type(exc).__name__,
                )
        return self._reads

    @staticmethod
    def whole(size: int, verify_first: bool) -> bool:
        """Whether a blob comes from the tier whole (verified first) rather than by range."""
        return verify_first or size <= WHOLE_MAX

    async def fetch_whole(self, digest: Digest, size: int) -> bool:
        """Publish ``digest`` (``size`` bytes) from the tier, verified (``TierReads.fetch``);
        False if the tier has no good copy or does not answer in time (then the origin is
        asked)."""
        reads = await self._open()
        if reads is None or not reads.usable_for(digest):
            return False
        path = None
        with trio.move_on_after(2 * reads.timeout) as scope:
            path = await trio.to_thread.run_sync(
                reads.fetch,
                self._cas,
                digest,
                size,
                limiter=self._threads,
                abandon_on_cancel=True,
            )
        if scope.cancelled_caught:
            reads.went_down(TimeoutError(f"no answer in {2 * reads.timeout:.0f} s"))
        return path is not None

    async def holds(self, digest: Digest, size: int) -> bool:
        """Whether to read ``digest``'s ranges from the tier (asked once, then remembered)."""
        reads = await self._open()
        if reads is None or not reads.usable_for(digest):
            return False
        if digest in self._leading:
            return False  # this node fetches it from the origin for the fleet
        asking = self._asking.get(digest)
        if asking is not None:  # another range of the same blob asks (or waits on a lease):
            await asking.wait()  # its answer is ours
            return self._blocks.get(digest) is not None and reads.usable_for(digest)
        if digest in self._blocks:
            if self._blocks[digest] is not None:
                return True
            if trio.current_time() < self._recheck_at.get(digest, math.inf):
                return False
        asking = self._asking[digest] = trio.Event()
        try:
            return await self._ask(reads, digest, size)
        finally:
            del self._asking[digest]
            asking.set()

    async def _ask(self, reads: TierReads, digest: Digest, size: int) -> bool:
        store = reads.store

        def look() -> tuple[int | None, bytes | None]:
            info = store.head(blob_key(digest))
            if info is None:
                return None, None
            listed = store.get(blocks_key(digest))
            return info.size, None if listed is None else listed[0]

        answer: tuple[int | None, bytes | None] | None = None
        with trio.move_on_after(2 * reads.timeout) as scope:
            try:
                answer = await trio.to_thread.run_sync(
                    look, limiter=self._threads, abandon_on_cancel=True
                )
            except TierError as exc:
                reads.went_down(exc)
                return False  # not remembered: asked again once the tier is back
        if scope.cancelled_caught or answer is None:
            reads.went_down(TimeoutError(f"no answer in {2 * reads.timeout:.0f} s"))
            return False
        held_size, listed = answer
        blocks = None
        if held_size is not None and held_size != size:
            reads.object_damaged(digest, f"{held_size} bytes, expected {size}")
        elif held_size is not None and listed is not None:
            blocks = parse_block_list(listed, digest, size)
            if blocks is None:
                reads.object_damaged(digest, "its block list does not describe it")
        self._blocks[digest] = blocks
        if held_size is None or (held_size == size and listed is None):
            # absent, not damaged: another node may be uploading it, or its list, right now
            self._recheck_at[digest] = trio.current_time() + RECHECK_SECONDS
        if held_size is None and self.spawn is not None:
            try:
                return await self._lead_or_follow(reads, digest, size, look)
            except _TierGone:
                return False
        return blocks is not None

    async def _call(self, reads: TierReads, call: Callable[[], T]) -> T:
        """``call`` in a thread, bounded by the tier's timeout; ``_TierGone`` if it fails."""
        with trio.move_on_after(2 * reads.timeout):
            try:
                return await trio.to_thread.run_sync(
                    call, limiter=self._threads, abandon_on_cancel=True
                )
            except TierError as exc:
                reads.went_down(exc)
                raise _TierGone from None
        reads.went_down(TimeoutError(f"no answer in {2 * reads.timeout:.0f} s"))
        raise _TierGone

    async def _lead_or_follow(
        self,
        reads: TierReads,
        digest: Digest,
        size: int,
        look: Callable[[], tuple[int | None, bytes | None]],
    ) -> bool:
        """The tier lacks ``digest``: take its fetch lease and fetch it from the origin
        (False), or wait while another node's lease lives for the blob to appear in the tier
        (True once it has, with its block list)."""
        store = reads.store
        lease = await self._call(reads, lambda: leases.take(store, digest, self._owner))
        if lease is None:
            self._following.add(digest)
            try:
                lease = await self._follow(reads, digest, size, look)
            finally:
                self._following.discard(digest)
            if lease is None:
                return self._blocks.get(digest) is not None
        self._leading[digest] = _Leading(lease, trio.current_time())
        assert self.spawn is not None
        self.spawn(self._keep_leading, reads, digest)
        return False

    def following(self, digest: Digest) -> bool:
        """Whether this node waits for ``digest`` on another node's live fetch lease (its
        readers wait longer than ``fetch.io_timeout`` then: the fleet's fetch makes progress)."""
        return digest in self._following

    async def _follow(
        self,
        reads: TierReads,
        digest: Digest,
        size: int,
        look: Callable[[], tuple[int | None, bytes | None]],
    ) -> leases.Lease | None:
        """Wait while another node's lease on ``digest`` lives: None once the blob is in the
        tier (its block list in ``_blocks``) or the wait is given up; this node's lease if the
        other was abandoned and this node took it over."""
        store = reads.store
        watch = leases.Watch()
        deadline = trio.current_time() + FOLLOW_SECONDS
        while trio.current_time() < deadline:
            etag = await self._call(reads, lambda: leases.current_etag(store, digest))
            if watch.abandoned(etag) or (etag is not None and etag == self._given_up.get(digest)):
                stale = etag
                attempt = (
                    partial(leases.take, store, digest, self._owner)
                    if stale is None
                    else partial(leases.take_over, store, digest, self._owner, stale)
                )
                lease = await self._call(reads, attempt)
                if lease is not None:
                    log.info("took over the abandoned fetch lease of %s", digest)
                    return lease
                watch = leases.Watch()  # another waiter took it first: watch that one
            await trio.sleep(POLL_SECONDS)
            held_size, listed = await self._call(reads, look)
            if held_size == size and listed is not None:
                blocks = parse_block_list(listed, digest, size)
                if blocks is None:
                    reads.object_damaged(digest, "its block list does not describe it")
                    return None
                self._blocks[digest] = blocks
                self._recheck_at.pop(digest, None)
                return None
            if held_size is not None and held_size != size:
                reads.object_damaged(digest, f"{held_size} bytes, expected {size}")
                return None
        return None  # waited long enough: fetched from the origin without a lease

    def fetching(self, digest: Digest) -> None:
        """This node is fetching ``digest`` from its origin now (keeps its lease alive)."""
        leading = self._leading.get(digest)
        if leading is not None:
            leading.active_at = trio.current_time()

    async def _keep_leading(self, reads: TierReads, digest: Digest) -> None:
        """Renew ``digest``'s lease while this node fetches it, then until the tier holds it;
        give it up (let it go stale) when the node stops fetching a blob it did not keep."""
        store = reads.store
        try:
            while (leading := self._leading.get(digest)) is not None:
                await trio.sleep(leases.RENEW_SECONDS)
                now = trio.current_time()
                if leading.kept_at is not None:
                    held = await trio.to_thread.run_sync(
                        reads.ledger.holds, digest, abandon_on_cancel=True
                    )
                    if held or now - leading.kept_at > UPLOAD_WAIT_SECONDS:
                        return
                elif now - leading.active_at > IDLE_SECONDS:
                    return
                renewed = await self._call(
                    reads, partial(leases.renew, store, leading.lease, self._owner)
                )
                if renewed is None:
                    log.info("the fetch lease of %s was taken over", digest)
                    return
                leading.lease = renewed
        except _TierGone:
            return
        except Exception:
            log.exception("renewing the fetch lease of %s failed", digest)
        finally:
            leading = self._leading.pop(digest, None)
            if leading is not None:  # ours, not renewed from now on: take it back at once
                self._given_up[digest] = leading.lease.etag

    def damaged(self, digest: Digest, why: str) -> None:
        """The tier's bytes of ``digest`` failed a check: reported once, never used again."""
        self._blocks[digest] = None
        self._recheck_at.pop(digest, None)
        if self._reads is not None:
            self._reads.object_damaged(digest, why)

    async def fetch(self, digest: Digest, start: int, end: int, deliver: Deliver) -> int:
        """Deliver ``[start, end)`` of ``digest``'s object, every block checked; returns where
        it stopped (``end`` if all came). Stops early, without raising, on a tier error, a
        hang or a bad block (the bytes before it are delivered)."""
        reads = self._reads
        blocks = self._blocks.get(digest)
        position = start
        key = blob_key(digest)
        while reads is not None and blocks is not None and position < end:
            if not reads.usable_for(digest):
                break
            length = min(PIECE, end - position)
            data = b""
            with trio.move_on_after(reads.timeout) as scope:
                try:
                    data = await trio.to_thread.run_sync(
                        _get_checked,
                        reads.store,
                        key,
                        position,
                        length,
                        blocks,
                        limiter=self._threads,
                        abandon_on_cancel=True,
                    )
                except TierError as exc:
                    reads.went_down(exc)
                    break
                except _BadBlock as exc:
                    self.damaged(digest, str(exc))
                    data = exc.good
            if scope.cancelled_caught:
                reads.went_down(TimeoutError(f"no answer in {reads.timeout:.0f} s"))
                break
            if data:
                await deliver(position, data)
                position += len(data)
                self.bytes_read += len(data)
            if len(data) < length:
                break
        return position

    async def kept(self, digest: Digest, size: int, path: Path) -> None:
        """``digest`` was verified and kept at ``path``: if it came from the tier, note it as
        held (no upload back); otherwise put its block list there (create-only), so other
        nodes can read its ranges from the tier once the write-behind has uploaded it. Errors
        cost only that: they are logged at INFO."""
        leading = self._leading.get(digest)
        if leading is not None:
            leading.kept_at = trio.current_time()
        reads = self._reads if self._reads is not None else await self._open()
        if reads is None or not reads.up():
            return
        try:
            with trio.move_on_after(4 * reads.timeout):
                if self._blocks.get(digest) is not None:
                    await trio.to_thread.run_sync(
                        reads.ledger.mark_held, [digest], abandon_on_cancel=True
                    )
                    return
                # from the Hub: the write-behind sends it now, not at its next round (its
                # backlog is the usage table, written out every few seconds: write it now)
                usage = self._cas.usage
                if usage is not None:
                    await trio.to_thread.run_sync(usage.flush, abandon_on_cancel=True)
                self._tier.uploaded_later()
                listed = await trio.to_thread.run_sync(
                    block_list, digest, size, path, limiter=self._hashing, abandon_on_cancel=True
                )
                await trio.to_thread.run_sync(
                    reads.store.put_new,
                    blocks_key(digest),
                    listed,
                    limiter=self._threads,
                    abandon_on_cancel=True,
                )
        except Exception as exc:  # noqa: BLE001 - bookkeeping only
            log.info("the tier's block list of %s was not written: %s", digest, exc)
