"""How much the kernel reads ahead on a mount, which decides how large its FUSE reads are.

The kernel asks a FUSE file system for file contents in requests no larger than its read-ahead
for that mount (``/sys/class/bdi/<major:minor>/read_ahead_kb``, 128 KiB by default). Every
request is a Python call here, so 128 KiB requests cap a cached read at a few hundred MB/s;
at 4 MiB the kernel sends 1 MiB requests (FUSE's largest) and the same read goes several
times faster.

Each source says what it wants (``Source.read_ahead_kib``): git mounts ask for 4 MiB (blobs
are fetched whole anyway); Hub mounts keep the default, because the kernel also reads that far
around every page a program maps (``safetensors`` maps its files), past the end of the one
tensor it wanted, and those bytes would be fetched from the Hub (docs/benchmarks.md).

The kernel sets it when it gets the file system's answer to FUSE's INIT request, which the
worker sends once its loop runs, after the mount: a value written before that is overwritten.
So it is set from the loop, and checked again a little later.

Only root may write the setting; anyone else keeps the kernel's default, silently.
"""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from .mountpoints import mount_at

log = logging.getLogger(__name__)

BDI = Path("/sys/class/bdi")


async def keep_read_ahead(mountpoint: Path, kib: int) -> None:
    """Set the read-ahead of our mount once FUSE's INIT has been answered, and see it stays."""
    for delay in (0.05, 0.25, 1.0):
        await trio.sleep(delay)
        if not await trio.to_thread.run_sync(set_read_ahead, mountpoint, kib):
            return


def set_read_ahead(mountpoint: Path, kib: int) -> bool:
    """Set the read-ahead of the mount at ``mountpoint`` (if it differs); True if it is set.
    Finds the mount in the mount table (a ``stat`` of our own mount could wait on us)."""
    entry = mount_at(mountpoint)
    if entry is None or ":" not in entry.device:
        return False
    setting = BDI / entry.device / "read_ahead_kb"
    try:
        if setting.read_text().strip() == str(kib):
            return True
        setting.write_text(f"{kib}\n")
    except OSError as exc:
        log.debug("read-ahead of %s stays at the default: %s", mountpoint, exc)
        return False
    log.debug("read-ahead of %s: %d KiB", mountpoint, kib)
    return True
