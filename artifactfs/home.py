"""Where artifactfs keeps its state: ``$ARTIFACTFS_HOME`` or a per-user default.

Layout (everything may be lost to a crash at any instant without corrupting what is published):

- ``cas/``        verified, immutable blobs, shared by every mount of this home;
- ``snapshots/``  one SQLite index per commit (content-addressed, so shared too);
- ``run/logs/``   one log file per mount point.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "ARTIFACTFS_HOME"


def default_home() -> Path:
    """``$ARTIFACTFS_HOME``, else ``$XDG_DATA_HOME/artifactfs``, else ~/.local/share/artifactfs."""
    explicit = os.environ.get(HOME_ENV)
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return (base / "artifactfs").absolute()


@dataclass(frozen=True)
class ArtifactHome:
    """The directories of one state home; ``ensure()`` creates them."""

    root: Path

    @property
    def cas_dir(self) -> Path:
        return self.root / "cas"

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"

    @property
    def logs_dir(self) -> Path:
        return self.root / "run" / "logs"

    def log_file_for(self, mountpoint: Path) -> Path:
        """One log per mount point, named so that a person can tell which is which."""
        tag = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:12]
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in mountpoint.name)[:40]
        return self.logs_dir / f"mount-{stem or 'root'}-{tag}.log"

    def ensure(self) -> None:
        for directory in (self.cas_dir, self.snapshots_dir, self.logs_dir):
            directory.mkdir(parents=True, exist_ok=True)
