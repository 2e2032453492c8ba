"""Mount points: what the kernel's mount table says, checks before mounting, and clean-up.

A mount point left behind by a killed worker answers ``ENOTCONN``; the next mount on that
path removes it first (``fusermount3 -u -z``), so a crash never leaves a path unusable.

A user other than root mounts and unmounts through the setuid ``fusermount3``, which has rules
of its own (an open ``/dev/fuse``, a mount point the user may write to, only one's own mounts
to unmount). We check them first, so that breaking one costs one clear line instead of a
failed mount and libfuse's two lines about it.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

log = logging.getLogger(__name__)

FS_TYPE = "fuse.artifactfs"
FUSE_DEVICE = Path("/dev/fuse")


@dataclass(frozen=True)
class MountEntry:
    mountpoint: Path
    fs_type: str
    source: str
    options: str = ""
    """The super block's options (``ro,user_id=1000,...``)."""
    device: str = ""
    """``major:minor`` of the mounted file system; for FUSE the minor names the connection
    in /sys/fs/fuse/connections."""

    @property
    def user_id(self) -> int | None:
        """Who mounted it, for a FUSE mount."""
        for option in self.options.split(","):
            if option.startswith("user_id=") and option[8:].isdigit():
                return int(option[8:])
        return None


def _unescape(field: str) -> str:
    """Undo the octal escapes (``\\040`` for space, ...) of /proc/self/mountinfo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_table() -> list[MountEntry]:
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 2:
                options = tail[2] if len(tail) >= 3 else ""
                entries.append(
                    MountEntry(
                        Path(_unescape(fields[4])), tail[0], _unescape(tail[1]), options, fields[2]
                    )
                )
    return entries


def mount_at(path: Path) -> MountEntry | None:
    """The topmost mount whose mount point is exactly ``path``."""
    found = None
    for entry in mount_table():
        if entry.mountpoint == path:
            found = entry
    return found


def detach(path: Path, lazy: bool = True) -> None:
    """Unmount a FUSE mount (as root or as the user who mounted it); raise UserError if not."""
    entry = mount_at(path)
    owner = entry.user_id if entry is not None else None
    if os.getuid() != 0 and owner is not None and owner != os.getuid():
        raise UserError(f"cannot unmount {path}: user {owner} mounted it (only they or root can)")
    command = ["fusermount3", "-u", "-q"] + (["-z"] if lazy else []) + ["--", str(path)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)
    except FileNotFoundError:
        raise UserError("fusermount3 is not installed (Debian: apt-get install fuse3)") from None
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["fusermount3 failed"])[-1]
        raise UserError(f"cannot unmount {path}: {reason.removeprefix('fusermount3: ')}")


def is_stale(path: Path) -> bool:
    """True if ``path`` is a FUSE mount whose process is gone.

    ``statfs`` always reaches the file system process (``stat`` may be answered from the
    kernel's attribute cache), so it is the probe that tells a dead mount from a live one.
    """
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def remove_stale(path: Path) -> None:
    """Detach a dead artifactfs mount; refuse to touch another file system's."""
    entry = mount_at(path)
    if entry is not None and entry.fs_type != FS_TYPE:
        raise UserError(f"{path} is a dead {entry.fs_type} mount, not ours: unmount it first")
    log.warning("removing stale mount at %s (its process is gone)", path)
    detach(path, lazy=True)


def check_mountpoint(text: str) -> Path:
    """Validate a mount point for a new mount, removing a stale mount left there first."""
    path = Path(os.path.realpath(text))
    if is_stale(path):
        remove_stale(path)
    if mount_at(path) is not None:
        raise UserError(f"{path} is already a mount point")
    check_directory(path)
    return path


def check_directory(path: Path) -> None:
    """Raise ``UserError`` unless ``path`` is an empty directory that we may mount on."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"mount point {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"mount point {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"mount point {path} is not a directory")
    try:
        with os.scandir(path) as entries:
            if next(entries, None) is not None:
                raise UserError(f"mount point {path} is not empty")
    except PermissionError:
        raise UserError(f"mount point {path} is not readable") from None
    if os.getuid() != 0:
        _check_fusermount_rules(path, st)


def _check_fusermount_rules(path: Path, st: os.stat_result) -> None:
    """What fusermount3 demands of a user's mount point (root is exempt)."""
    if st.st_mode & stat.S_ISVTX and st.st_uid != os.getuid():
        raise UserError(f"mount point {path} is a sticky directory that you do not own")
    if not os.access(path, os.W_OK):
        raise UserError(f"mount point {path} is not writable by you (fusermount3 requires it)")


def check_fuse_device() -> None:
    """Raise ``UserError`` unless this process can open ``/dev/fuse``.

    Users mount through fusermount3, which opens the device with their rights: it must be
    mode 0666, as a udev rule makes it on a normal install (not where no udev runs).
    """
    if not FUSE_DEVICE.exists():
        raise UserError(
            f"{FUSE_DEVICE} does not exist: load the fuse module (modprobe fuse), or give the"
            " container the device (docker run --device /dev/fuse)"
        )
    if os.getuid() != 0 and not os.access(FUSE_DEVICE, os.R_OK | os.W_OK):
        raise UserError(
            f"{FUSE_DEVICE} is not open to you (mode {FUSE_DEVICE.stat().st_mode & 0o777:o}):"
            f" users can mount only once root runs chmod 0666 {FUSE_DEVICE}"
            " (as udev does on a normal install)"
        )
