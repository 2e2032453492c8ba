"""Copying a lower file's bytes into the upper directory (blocking: run it in a thread).

From a whole, verified CAS file: a reflink (``FICLONE``) where the file system shares blocks
between files (btrfs, XFS; the CAS and the workspace are both under the state home, so usually
the same file system), else ``copy_file_range`` (in-kernel, server-side on NFS), else a plain
read/write loop. The copy is synced before the caller publishes it (``Overlay.copied_up``).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

FICLONE = 0x40049409
"""_IOW(0x94, 9, int) from linux/fs.h."""
CHUNK = 8 << 20


def copy_file(source: Path, staging: Path, mtime_ns: int) -> str:
    """Copy ``source`` into a new ``staging`` file, synced, with ``mtime_ns`` as its
    modification time; return how (``reflink``, ``copy_file_range`` or ``read``)."""
    with open(source, "rb") as src, open(staging, "wb") as dst:
        os.fchmod(dst.fileno(), 0o600)
        how = _clone_or_copy(src.fileno(), dst.fileno(), os.fstat(src.fileno()).st_size)
        os.utime(dst.fileno(), ns=(mtime_ns, mtime_ns))
        os.fsync(dst.fileno())
    return how


def _clone_or_copy(src: int, dst: int, size: int) -> str:
    try:
        fcntl.ioctl(dst, FICLONE, src)
        return "reflink"
    except OSError as exc:
        if exc.errno not in (
            errno.EOPNOTSUPP,
            errno.ENOTTY,
            errno.EXDEV,
            errno.EINVAL,
            errno.EPERM,
        ):
            raise
    copied = 0
    try:
        while copied < size:
            n = os.copy_file_range(src, dst, size - copied, copied, copied)
            if n == 0:
                break
            copied += n
        if copied == size:
            return "copy_file_range"
        # short (some kernels end a cross-device copy early on a full disk): the loop below
        # finishes it or raises the true error
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    while copied < size:
        chunk = os.pread(src, min(CHUNK, size - copied), copied)
        if not chunk:
            break
        with memoryview(chunk) as view:
            written = 0
            while written < len(view):  # a short write (a full disk) is retried: ENOSPC then
                written += os.pwrite(dst, view[written:], copied + written)
        copied += len(chunk)
    return "read"


def clone_or_copy(src: int, dst: int, size: int) -> str:
    """Copy ``size`` bytes of the open file ``src`` into the empty file ``dst`` the cheapest
    way the file systems allow (reflink, ``copy_file_range``, read/write); return which. Not
    synced. Also used to take blobs from the huggingface_hub cache and to export to it."""
    return _clone_or_copy(src, dst, size)
