"""The last resort when a worker will not stop: abort its FUSE connection, detach its mount.

A worker asked to stop fails what waits and exits within seconds. One that cannot (stopped by a
debugger, wedged in the kernel, stuck behind a thread that never returns) must still never make
``unmount``, ``docker stop`` or a reader hang: that is the top complaint about FUSE mounts of
remote storage. So the daemon, after its grace period:

1. writes to ``/sys/fs/fuse/connections/N/abort`` (N is the mount's device minor number): the
   kernel fails every request in flight and every later one with ENOTCONN, so no reader stays
   blocked on the worker, and the worker's own reads of ``/dev/fuse`` end;
2. detaches the mount point lazily (``fusermount3 -u -z``): it disappears from the namespace at
   once, whoever still holds files in it;
3. kills the worker with SIGKILL.

The fusectl file system is mounted on ``/sys/fs/fuse/connections`` where it is not yet (root
only; containers may refuse it, and then steps 2 and 3 still apply).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path

from ..errors import UserError
from .mountpoints import detach, mount_at

log = logging.getLogger(__name__)

CONNECTIONS = Path("/sys/fs/fuse/connections")


def abort_connection(mountpoint: Path) -> bool:
    """Abort the FUSE connection serving ``mountpoint``; True if it was aborted."""
    entry = mount_at(mountpoint)
    if entry is None or not entry.fs_type.startswith("fuse"):
        return False
    _, _, minor = entry.device.partition(":")
    if not minor.isdigit():
        return False
    abort = CONNECTIONS / minor / "abort"
    if not abort.exists() and not _mount_fusectl():
        return False
    try:
        abort.write_text("1")
    except OSError as exc:
        log.warning("could not abort the FUSE connection of %s: %s", mountpoint, exc)
        return False
    log.warning("aborted the FUSE connection of %s", mountpoint)
    return True


def force_detach(mountpoint: Path) -> None:
    """Abort the connection, then detach the mount lazily; never raises."""
    abort_connection(mountpoint)
    if mount_at(mountpoint) is not None:
        try:
            detach(mountpoint, lazy=True)
        except UserError as exc:
            log.warning("%s", exc)


def _mount_fusectl() -> bool:
    if os.geteuid() != 0 or not CONNECTIONS.is_dir():
        return False
    if mount_at(CONNECTIONS) is not None:
        return True
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(
            ["mount", "-t", "fusectl", "fusectl", str(CONNECTIONS)],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return result.returncode == 0
    return False
