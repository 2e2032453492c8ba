"""What a mount pulled from its origin, counted by whichever thread did the pulling."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class FetchCounters:
    """What this process pulled from the origin; updated from worker threads."""

    bytes_received: int = 0
    blobs_fetched: int = 0
    blob_fetches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self.bytes_received += count

    def add_blob_fetch(self, blobs: int) -> None:
        with self._lock:
            self.blob_fetches += 1
            self.blobs_fetched += blobs
