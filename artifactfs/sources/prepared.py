"""What a source's prepare hands to the mount: a snapshot on disk and the commit it shows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PreparedSnapshot:
    path: Path
    commit: str
    object_format: str
