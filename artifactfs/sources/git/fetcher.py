"""Get missing blobs into the CAS, coalescing concurrent misses.

Two promises: one blob wanted by many readers at once is fetched once (they all wait on the
same pending entry), and many blobs wanted at about the same moment go out as one fetch: after
a miss the batcher waits until no new miss has arrived for ``quiet_seconds`` (2 ms), at most
``max_gather_seconds`` (20 ms), and while every fetch slot is busy new misses pile up into the
next batch. A lone reader pays 2 ms; a burst of readers shares round trips. The git protocol
returns any number of blobs in one pack, so a batch costs one round trip however large it is.

Blobs can also be asked for ahead of need (``prefetch``: see walks.py). Such
guesses go in batches of their own, after every batch that someone waits for, and only
``guess_batches`` at a time: a walker reads them as they land, and many batches fetched side
by side only slowed each other down (the server builds each pack, we inflate and hash each,
on the same few cores).
They may be fetched another way than demands (``fetch_guesses``: in a process of its own,
fetch_process.py). Keeping them apart means a guess that fails (one
blob the server will not send fails its whole batch) never fails a reader: a reader whose
blob was in a failed guess asks for it again, alone. A reader whose blob is still queued as
a guess moves it to the front.

A reader waits for its own blob, not for the whole batch it went out in: the fetch thread
reports each blob as it is published, so a walker reads the first files of a large batch
while the rest is still arriving.

Callers ask only for blobs they found missing. The fetch thread checks the CAS again before
going to the network, so a blob published by an earlier batch (or another process) in the
meantime is never fetched twice; and with ``claims`` (cas/claims.py) a blob another process is
fetching right now is waited for, not fetched again.

With ``from_tier`` (the shared tier, content.py), every batch, demands and guesses alike, is
first asked of the tier (bounded: a down or slow tier costs one short wait, see
tier/read_through.py); only what it did not give goes to the origin, and ``from_origin`` is
told when the origin published something (the tier's uploader looks at once).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

import trio

from ...cas.claims import FetchClaims
from ...errors import BlobUnavailable, NoSpace, SourceError, is_no_space

log = logging.getLogger(__name__)

Published = Callable[[str], None]
"""Told each blob id as soon as it is in the CAS (callable from any thread)."""
FetchBatch = Callable[[Mapping[str, int | None], Published], set[str]]
"""Blocking: fetch these blob ids (with their expected sizes, None if unknown) into the CAS,
calling ``published`` with each as it lands; return the ids that were published."""
Present = Callable[[str], bool]
"""Blocking: is this blob already in the CAS?"""
FromTier = Callable[[Mapping[str, int | None]], Awaitable[set[str]]]
"""On the trio side: those of these blob ids the shared tier published (verified)."""


CLAIM_WAIT_SECONDS = 300.0
"""How long to wait for another process's fetch of a blob before fetching it ourselves."""


class PartialFetch(SourceError):
    """Some of a batch arrived (``got``), the rest failed for ``cause``."""

    def __init__(self, got: set[str], cause: SourceError) -> None:
        super().__init__(str(cause))
        self.got = got
        self.__cause__ = cause  # what went wrong (a full disk, say) stays findable


@dataclass
class _Pending:
    size: int | None
    done: trio.Event = field(default_factory=trio.Event)
    error: str | None = None
    no_space: bool = False
    """It failed because the store is full (the reader gets ENOSPC, not EIO)."""
    guess: bool = False
    """Asked for ahead of need (``prefetch``), not by a reader."""


class BlobFetcher:
    def __init__(
        self,
        fetch_batch: FetchBatch,
        present: Present,
        *,
        claims: FetchClaims | None = None,
        parallel_fetches: int = 4,
        fetch_guesses: FetchBatch | None = None,
        max_batch: int = 1000,
        max_guess_batch: int = 4096,
        guess_batches: int = 1,
        quiet_seconds: float = 0.002,
        max_gather_seconds: float = 0.02,
        from_tier: FromTier | None = None,
        from_origin: Callable[[], None] | None = None,
    ) -> None:
        self._fetch_batch = fetch_batch
        self._fetch_guesses = fetch_guesses or fetch_batch
        self._present = present
        self._claims = claims
        self._slots = trio.Semaphore(parallel_fetches)
        self._threads = trio.CapacityLimiter(parallel_fetches)
        self._max_batch = max_batch
        self._max_guess_batch = max_guess_batch
        self._guessing = 0
        """Batches of guesses being fetched; at most ``guess_batches`` at once."""
        self._guess_batches = guess_batches
        self._quiet_seconds = quiet_seconds
        self._max_gather_seconds = max_gather_seconds
        self._pending: dict[str, _Pending] = {}
        self._queue: list[str] = []
        self._guesses: list[str] = []
        self._wakeup = trio.Event()
        self._closed: str | None = None
        self._from_tier = from_tier
        self._from_origin = from_origin

    async def ensure(self, wanted: Mapping[str, int | None]) -> None:
        """Return when every blob in ``wanted`` (id -> expected size, None if unknown) is in
        the CAS; raise ``BlobUnavailable`` if one cannot be had.

        Cancellation: safe; a cancelled caller leaves the fetch running for other waiters.
        """
        waits = [(oid, self._demand(oid, size)) for oid, size in wanted.items()]
        for oid, pending in waits:
            await pending.done.wait()
            if pending.error is not None and pending.guess:  # a failed guess: ask alone
                pending = self._demand(oid, pending.size)
                await pending.done.wait()
            if pending.error is not None:
                failure = NoSpace if pending.no_space else BlobUnavailable
                raise failure(f"blob {oid}: {pending.error}")

    def prefetch(self, wanted: Mapping[str, int | None]) -> None:
        """Fetch these blobs ahead of need, in batches of their own, after every batch a
        reader waits for; nobody waits, and a failure is only logged."""
        if self._closed is not None:
            return
        for oid, size in wanted.items():
            if oid not in self._pending:
                self._pending[oid] = _Pending(size, guess=True)
                self._guesses.append(oid)
        if self._guesses:
            self._wakeup.set()

    async def settle(self, oids: Iterable[str]) -> None:
        """Return once none of ``oids`` is being fetched any more (landed, or failed), without
        asking for them: a guess stays behind every reader's demand."""
        for oid in oids:
            pending = self._pending.get(oid)
            if pending is not None:
                await pending.done.wait()

    def _demand(self, oid: str, size: int | None) -> _Pending:
        """The pending fetch of ``oid`` a reader waits on (made, or moved to the front)."""
        pending = self._pending.get(oid)
        if pending is None:
            if self._closed is not None:
                raise BlobUnavailable(f"blob {oid}: {self._closed}")
            pending = self._pending[oid] = _Pending(size)
            self._queue.append(oid)
            self._wakeup.set()
        elif pending.guess and oid in self._guesses:  # not sent yet: it is wanted now
            self._guesses.remove(oid)
            pending.guess = False
            self._queue.append(oid)
            self._wakeup.set()
        return pending

    def close(self, reason: str) -> None:
        """Fail every waiting and future request at once (the mount is going away)."""
        self._closed = reason
        self._queue.clear()
        self._guesses.clear()
        for pending in self._pending.values():
            pending.error = reason
            pending.done.set()
        self._pending.clear()

    async def run(self) -> None:
        """The batching loop; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            while True:
                if not self._queue and not self._may_guess():
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                    await self._gather()
                    continue
                await self._slots.acquire()
                if self._queue:  # what readers wait for first
                    batch, guess = self._queue[: self._max_batch], False
                    del self._queue[: self._max_batch]
                elif self._may_guess():
                    batch, guess = self._guesses[: self._max_guess_batch], True
                    del self._guesses[: self._max_guess_batch]
                    self._guessing += 1
                else:  # taken meanwhile (closed)
                    self._slots.release()
                    continue
                nursery.start_soon(self._fetch, batch, guess)

    def _may_guess(self) -> bool:
        return bool(self._guesses) and self._guessing < self._guess_batches

    async def _gather(self) -> None:
        """Let a burst of misses finish arriving: wait until it has been quiet for a moment."""
        deadline = trio.current_time() + self._max_gather_seconds
        while True:
            seen = len(self._queue) + len(self._guesses)
            now = trio.current_time()
            if now >= deadline:
                return
            await trio.sleep(min(self._quiet_seconds, deadline - now))
            if len(self._queue) + len(self._guesses) == seen:
                return

    def _fetch_missing(
        self, batch: Mapping[str, int | None], published: Published, fetch: FetchBatch
    ) -> set[str]:
        """In a worker thread: what is still missing goes to the origin, unless another
        process is fetching it already, in which case we wait for that."""
        present = {oid for oid in batch if self._present(oid)}
        missing = {oid: size for oid, size in batch.items() if oid not in present}
        for oid in present:
            published(oid)
        if not missing:
            return present
        if self._claims is None:
            return present | fetch(missing, published)
        claims = [(oid, self._claims.try_claim(oid)) for oid in missing]
        failure: SourceError | None = None
        got: set[str] = set()
        try:
            # another process may have published it between our check and our claim
            mine = {
                oid: missing[oid]
                for oid, claim in claims
                if claim is not None and not self._present(oid)
            }
            got = {oid for oid, claim in claims if claim is not None and oid not in mine}
            if mine:
                got |= fetch(mine, published)
        except SourceError as exc:
            failure = exc  # still wait for what others fetch: that may well succeed
        finally:
            for _, claim in claims:
                if claim is not None:
                    claim.release()
        theirs = {oid: missing[oid] for oid, claim in claims if claim is None}
        for oid in theirs:
            self._claims.wait(oid, CLAIM_WAIT_SECONDS)
        still_missing = {oid: size for oid, size in theirs.items() if not self._present(oid)}
        if still_missing and failure is None:  # the other process failed: try ourselves
            got |= fetch(still_missing, published)
        got |= set(theirs) - set(still_missing)
        if failure is not None:
            raise PartialFetch(present | got, failure)
        return present | got

    def _landed(self, oid: str) -> None:
        """A blob of a running batch is in the CAS: its readers need not wait for the rest."""
        pending = self._pending.get(oid)
        if pending is not None:
            pending.done.set()

    async def _ask_tier(self, sizes: Mapping[str, int | None]) -> set[str]:
        """Those of ``sizes`` the shared tier published; each reader is told as its blob lands."""
        if self._from_tier is None or not sizes:
            return set()
        try:
            found = await self._from_tier(sizes)
        except Exception:  # the tier never fails a read: the origin is asked instead
            log.exception("asking the tier for %d blob(s) failed", len(sizes))
            return set()
        for oid in found:
            self._landed(oid)
        return found

    async def _fetch(self, batch: list[str], guess: bool) -> None:
        error: str | None = None
        from_tier: set[str] = set()
        no_space = False
        got: set[str] = set()
        sizes = {oid: self._pending[oid].size for oid in batch if oid in self._pending}
        token = trio.lowlevel.current_trio_token()
        started = trio.current_time()

        def published(oid: str) -> None:  # in the fetch thread
            with contextlib.suppress(trio.RunFinishedError):  # an abandoned thread, too late
                token.run_sync_soon(self._landed, oid)

        try:
            from_tier = await self._ask_tier(sizes)
            rest = {oid: size for oid, size in sizes.items() if oid not in from_tier}
            got = set(from_tier)
            if rest:
                got |= await trio.to_thread.run_sync(
                    self._fetch_missing,
                    rest,
                    published,
                    self._fetch_guesses if guess else self._fetch_batch,
                    limiter=self._threads,
                    abandon_on_cancel=True,
                )
                if self._from_origin is not None and got - from_tier:
                    self._from_origin()
        except SourceError as exc:
            error = str(exc)
            no_space = is_no_space(exc)
            got = exc.got | from_tier if isinstance(exc, PartialFetch) else from_tier
            log.error("fetching %d blob(s) failed: %s", len(batch) - len(got), error)
        except Exception as exc:
            if is_no_space(exc):  # publishing, not fetching, failed: the disk is full
                error, no_space = "no space left in the store's file system", True
                log.error("fetching %d blob(s) failed: %s", len(batch), error)
            else:
                error = "internal error (see the log)"
                log.exception("fetching %d blob(s) failed", len(batch))
        finally:
            log.debug(
                "%s batch of %d blob(s): %.3f s",
                "guess" if guess else "demand",
                len(batch),
                trio.current_time() - started,
            )
            self._slots.release()
            if guess:
                self._guessing -= 1
                self._wakeup.set()
        for oid in batch:
            pending = self._pending.pop(oid, None)
            if pending is None:  # closed meanwhile: its waiters were already told
                continue
            if oid not in got and not pending.done.is_set():  # set: it landed before a failure
                if error is None:
                    log.error("the server did not send blob %s", oid)
                pending.error = error or "the server did not send it"
                pending.no_space = no_space
            pending.done.set()
