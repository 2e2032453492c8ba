"""What one mount knows about itself, shared by its operations, its prepare task and xattrs."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..cas import GIT_SHA1, Algorithm
from ..snapshot import SnapshotIndex
from ..sources.counters import FetchCounters
from .gate import ReadyGate


@dataclass
class MountState:
    source_display: str
    """The source with credentials redacted."""
    ref: str | None
    gate: ReadyGate = field(default_factory=ReadyGate)
    counters: FetchCounters = field(default_factory=FetchCounters)
    snapshot: SnapshotIndex | None = None
    """Set when prepare succeeds; never replaced while a mount runs (refresh comes later)."""
    blob_algorithm: Algorithm = GIT_SHA1
