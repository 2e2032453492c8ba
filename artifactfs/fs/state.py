"""What one mount knows about itself, shared by its operations, its prepare task and xattrs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..snapshot import SnapshotIndex
from ..sources.counters import FetchCounters
from .gate import ReadyGate
from .read_ahead import OpenReadAhead


class ChangeSignal:
    """A version number that watchers can wait on: ``notify`` after every visible change."""

    def __init__(self) -> None:
        self.version = 0
        self._event = trio.Event()

    def notify(self) -> None:
        self.version += 1
        self._event.set()
        self._event = trio.Event()

    async def wait_past(self, version: int) -> int:
        """Return the current version once it differs from ``version``."""
        while self.version == version:
            await self._event.wait()
        return self.version


@dataclass
class MountState:
    source_display: str
    """The source with credentials redacted."""
    ref: str | None
    """``--ref`` as given (None: the origin's default)."""
    shown_ref: str = "HEAD"
    """The ref as people read it (``user.artifactfs.ref``): the default named."""
    gate: ReadyGate = field(default_factory=ReadyGate)
    counters: FetchCounters = field(default_factory=FetchCounters)
    snapshot: SnapshotIndex | None = None
    """The snapshot new lookups see; set when prepare succeeds, replaced by a refresh."""
    changes: ChangeSignal = field(default_factory=ChangeSignal)
    """Notified on every change a watcher may care about (gate state, commit)."""
    writable: bool = False
    """A workspace (writable) rather than a read-only mount."""
    changed_paths: Callable[[], int] | None = None
    """How many paths a workspace has changed (set once its overlay is open)."""
    read_ahead: OpenReadAhead | None = None
    """Chooses each open's kernel read-ahead (fs/read_ahead.py), where the source wants it."""
    read_sizes: Counter[int] = field(default_factory=Counter)
    """Read requests the kernel sent, by size (``user.artifactfs.read_sizes``)."""

    def __post_init__(self) -> None:
        self.gate.on_change = self.changes.notify
