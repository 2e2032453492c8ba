"""A CAS miss asks the tier before the origin: whole blobs, verified like anything else.

``TierReads.fetch`` downloads a blob's object into a staging file beside its CAS name and
``ContentStore.adopt``s it, which hashes it first: a damaged object in the tier is reported
(once per blob) and never published, and the caller goes to the origin as if the tier did not
have it. A tier that fails or is slow (``TierLocation.timeout`` per request) is left alone for
``DOWN_SECONDS``, so a down tier costs one bounded wait, not one per read; nothing that works
without a tier fails with one.

Blocking: call it from worker threads (``fetch_many`` does, for the trio side).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import trio

from ..cas import ContentStore, Digest, DigestMismatch
from .keys import blob_key
from .ledger import Ledger
from .objects import BoundedWriter, ObjectStore, TierError, TooLarge

log = logging.getLogger(__name__)

DOWN_SECONDS = 30.0
PARALLEL = 8


class TierReads:
    def __init__(self, store: ObjectStore, ledger: Ledger, timeout: float) -> None:
        self.store = store
        self.ledger = ledger
        self.timeout = timeout
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._bad: set[Digest] = set()
        """Blobs whose object failed its digest: asked of the origin from now on."""
        self.bytes_read = 0

    def up(self) -> bool:
        return time.monotonic() >= self._down_until

    def went_down(self, exc: Exception) -> None:
        with self._lock:
            if self.up():
                log.warning(
                    "the tier failed (%s); the origin is used for %.0f s", exc, DOWN_SECONDS
                )
            self._down_until = time.monotonic() + DOWN_SECONDS

    def usable_for(self, digest: Digest) -> bool:
        return self.up() and digest not in self._bad

    def object_damaged(self, digest: Digest, why: str) -> None:
        if digest not in self._bad:
            self._bad.add(digest)
            log.error(
                "the tier's copy of %s is damaged (%s): not used; the origin is asked instead",
                digest,
                why,
            )

    def fetch(self, cas: ContentStore, digest: Digest, size: int | None = None) -> Path | None:
        """The blob published from the tier, or None (absent, damaged, or the tier down).
        ``size``, where known, bounds the download: a longer object is damaged."""
        if not self.usable_for(digest):
            return None
        staging = cas.staging_path(digest)
        try:
            with open(staging, "xb") as out:
                sink = out if size is None else BoundedWriter(out, size)
                got = self.store.download(blob_key(digest), sink)  # type: ignore[arg-type]
                if got is None:
                    return None
                out.flush()
                os.fsync(out.fileno())
            try:
                path = cas.adopt(digest, staging)
            except DigestMismatch as exc:
                self.object_damaged(digest, str(exc))
                return None
            self.bytes_read += got
        except TooLarge as exc:
            self.object_damaged(digest, str(exc))
            return None
        except TierError as exc:
            self.went_down(exc)
            return None
        except OSError as exc:  # our disk, not the tier: the origin would fail the same way
            log.warning("could not keep %s from the tier: %s", digest, exc.strerror or exc)
            return None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)
        with contextlib.suppress(Exception):  # bookkeeping only: a busy ledger costs an upload
            self.ledger.mark_held([digest])
        return path

    async def fetch_many(
        self,
        cas: ContentStore,
        digests: Iterable[Digest],
        sizes: Mapping[Digest, int | None] | None = None,
    ) -> set[Digest]:
        """Those of ``digests`` the tier gave (published, verified), asked ``PARALLEL`` at a
        time. Waits at most about the tier's timeout per round of requests; a thread still
        waiting on a hung tier after twice that is abandoned and the rest go to the origin."""
        wanted = [digest for digest in digests if self.usable_for(digest)]
        found: set[Digest] = set()
        if not wanted:
            return found
        limiter = trio.CapacityLimiter(PARALLEL)

        async def one(digest: Digest) -> None:
            if not self.up():
                return
            size = sizes.get(digest) if sizes is not None else None
            path = await trio.to_thread.run_sync(
                self.fetch, cas, digest, size, limiter=limiter, abandon_on_cancel=True
            )
            if path is not None:
                found.add(digest)

        rounds = (len(wanted) + PARALLEL - 1) // PARALLEL
        with trio.move_on_after(2 * self.timeout * rounds) as scope:
            async with trio.open_nursery() as nursery:
                for digest in wanted:
                    nursery.start_soon(one, digest)
        if scope.cancelled_caught:
            self.went_down(TimeoutError(f"no answer in {2 * self.timeout * rounds:.0f} s"))
        return found
