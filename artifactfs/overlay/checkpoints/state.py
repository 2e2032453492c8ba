"""What this node remembers of its checkpoints, beside the workspace (``checkpoints.json``).

- ``etags``: per checkpoint name, the pointer's ETag as this node last wrote or read it: the
  compare-and-swap's expectation, so that a node that did not see another's checkpoint loses;
- ``held``: digests the tier is known to hold (sent, found there, or restored from it): not
  sent again, not even asked about;
- ``stats``: per captured file, its identity and times when it was last hashed, with the
  digest: an unchanged file is not read again (a file changed within ``RACY_NS`` of that
  capture is read again, as git treats a "racily clean" file, since a coarse clock may give a
  later write the same times);
- ``manifests``: per checkpoint name, the last manifest this node sent or restored there, to
  tell whether anything changed since.

It is forgotten whole when the tier's address changes. Written whole to a temporary and
renamed; a lost or damaged file costs uploads and a stale-ETag refusal, nothing else. One
checkpoint at a time per workspace: ``locked`` takes an ``flock`` beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "checkpoints.json"
LOCK_FILE = "checkpoints.lock"
RACY_NS = 2_000_000_000


@dataclass
class FileStat:
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    sha256: str

    def same(self, status: os.stat_result) -> bool:
        return (self.device, self.inode, self.size, self.mtime_ns, self.ctime_ns) == (
            status.st_dev,
            status.st_ino,
            status.st_size,
            status.st_mtime_ns,
            status.st_ctime_ns,
        )


@dataclass
class CheckpointState:
    tier: str = ""
    etags: dict[str, str] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    stats: dict[str, FileStat] = field(default_factory=dict)
    captured_ns: int = 0
    manifests: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "tier": self.tier,
                "etags": self.etags,
                "held": sorted(self.held),
                "stats": {k: list(vars(v).values()) for k, v in sorted(self.stats.items())},
                "captured_ns": self.captured_ns,
                "manifests": self.manifests,
            },
            separators=(",", ":"),
        ).encode()


def load(workspace: Path, tier: str) -> CheckpointState:
    """The state for the tier at ``tier`` (a fresh one if none, damaged or another tier's)."""
    try:
        document: Any = json.loads((workspace / STATE_FILE).read_bytes())
        if not isinstance(document, dict) or document.get("tier") != tier:
            return CheckpointState(tier)
        return CheckpointState(
            tier,
            {str(k): str(v) for k, v in document.get("etags", {}).items()},
            {str(d) for d in document.get("held", [])},
            {str(k): FileStat(*v) for k, v in document.get("stats", {}).items()},
            int(document.get("captured_ns", 0)),
            {str(k): str(v) for k, v in document.get("manifests", {}).items()},
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return CheckpointState(tier)


def save(workspace: Path, state: CheckpointState) -> None:
    final = workspace / STATE_FILE
    temp = workspace / f".{STATE_FILE}.tmp-{secrets.token_hex(4)}"
    try:
        with open(temp, "xb") as out:
            out.write(state.encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


class LockHandle:
    """One checkpoint of ``workspace`` at a time, across processes: an ``flock`` held from
    here to ``close`` (blocking: it waits for the one running)."""

    def __init__(self, workspace: Path) -> None:
        self._file = open(workspace / LOCK_FILE, "a")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        except BaseException:
            self._file.close()
            raise

    def close(self) -> None:
        self._file.close()
