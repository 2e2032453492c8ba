"""One process's way to the shared tier: the store, the ledger and the read-through state,
opened on first use (a process that never misses the CAS never imports obstore).

A source gets it as ``SourceSettings.tier`` (None: no tier configured). Everything here is
blocking unless it says otherwise; ``fetch_many`` and ``keep_uploading`` are for trio.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import trio

from ..cas import ContentStore, Digest
from .ledger import Ledger
from .location import TierLocation, location_from
from .objects import ObjectStore, TierError, open_store
from .read_through import TierReads
from .uploads import upload_backlog

log = logging.getLogger(__name__)
T = TypeVar("T")


class TierAccess:
    def __init__(self, location: TierLocation, home_root: Path, cas_root: Path) -> None:
        self.location = location
        self.home_root = home_root
        self.cas_root = cas_root
        self._lock = threading.Lock()
        self._store: ObjectStore | None = None
        self._ledger: Ledger | None = None
        self._reads: TierReads | None = None
        self.wake_uploads = trio.Event()

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, object], home_root: Path, cas_root: Path
    ) -> TierAccess | None:
        location = location_from(settings)
        return None if location is None else cls(location, home_root, cas_root)

    @property
    def description(self) -> str:
        return self.location.display

    @property
    def store(self) -> ObjectStore:
        with self._lock:
            if self._store is None:
                self._store = self._opened("client", lambda: open_store(self.location))
            return self._store

    @property
    def ledger(self) -> Ledger:
        with self._lock:
            if self._ledger is None:
                self._ledger = self._opened(
                    "ledger", lambda: Ledger(self.home_root, self.cas_root, self.location.url)
                )
            return self._ledger

    def _opened(self, what: str, opening: Callable[[], T]) -> T:
        """``opening()``, its failure a ``TierError`` like any other of the tier's: every
        caller already survives those (a client's configuration error, a locked ledger). The
        error's text may echo the client's configuration: its kind only."""
        try:
            return opening()
        except TierError:
            raise
        except Exception as exc:  # noqa: BLE001 - obstore's and sqlite3's errors alike
            raise TierError(
                f"{self.description}: its {what} cannot be opened ({type(exc).__name__})"
            ) from None

    @property
    def reads(self) -> TierReads:
        store, ledger = self.store, self.ledger
        with self._lock:
            if self._reads is None:
                self._reads = TierReads(store, ledger, self.location.timeout)
            return self._reads

    def fetch(self, cas: ContentStore, digest: Digest, size: int | None = None) -> Path | None:
        """Blocking read-through of one blob (see ``TierReads.fetch``)."""
        return self.reads.fetch(cas, digest, size)

    async def fetch_many(
        self,
        cas: ContentStore,
        digests: Iterable[Digest],
        sizes: Mapping[Digest, int | None] | None = None,
    ) -> set[Digest]:
        """Those of ``digests`` the tier gave, published and verified; ``sizes`` (where known)
        bound each download."""
        wanted = list(digests)
        if not wanted:
            return set()
        reads = await trio.to_thread.run_sync(lambda: self.reads)
        return await reads.fetch_many(cas, wanted, sizes)

    def uploaded_later(self) -> None:
        """Something was published from an origin: the upload task looks now, not at its next
        round. Safe from the trio thread only."""
        self.wake_uploads.set()
        self.wake_uploads = trio.Event()

    async def keep_uploading(self, cas: ContentStore) -> None:
        """The write-behind task of a process (the mount worker runs one). A tier that cannot
        be opened costs the uploads, never the mount."""
        try:
            store = await trio.to_thread.run_sync(lambda: self.store)
            ledger = await trio.to_thread.run_sync(lambda: self.ledger)
        except TierError as exc:
            log.warning("the tier cannot be used for uploads: %s", exc)
            return
        await upload_backlog(store, ledger, cas, lambda: self.wake_uploads)

    def close(self) -> None:
        with self._lock:
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None
