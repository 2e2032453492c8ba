"""``artifactfs status MOUNTPOINT``: what a mount says about itself through its root xattrs.

Reading the root's attributes never waits on the ready gate, so status answers at once while
a mount is preparing or failed.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import xattr

from ..errors import UserError
from ..mount.mountpoints import FS_TYPE, mount_at

_FIELDS = (
    "state",
    "source",
    "ref",
    "commit",
    "files",
    "bytes_fetched",
    "writable",
    "changed",
    "error",
)
_NUMBERS = ("files", "bytes_fetched", "writable", "changed")


def read_status(path: Path) -> dict[str, str | int | None]:
    entry = mount_at(Path(os.path.realpath(path)))
    if entry is None or entry.fs_type != FS_TYPE:
        raise UserError(f"{path} is not an artifactfs mount")
    report: dict[str, str | int | None] = {"mount": str(entry.mountpoint)}
    for field in _FIELDS:
        raw = _read_attribute(entry.mountpoint, f"user.artifactfs.{field}")
        if raw is None:
            report[field] = None
        else:
            text = raw.decode("utf-8", "replace")
            report[field] = int(text) if field in _NUMBERS else text
    return report


def _read_attribute(path: Path, name: str) -> bytes | None:
    for _ in range(10):
        try:
            return bytes(xattr.getxattr(str(path), name))
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.ENOTSUP):
                return None
            if exc.errno != errno.ERANGE:  # ERANGE: the value grew between size and read
                raise UserError(f"cannot read the state of {path}: {exc.strerror}") from None
    raise UserError(f"the state of {path} keeps changing; try again")
