"""Read a local file (a CAS blob, a partial) for the kernel without a thread hop when we can.

Every FUSE read ends in a ``pread`` of a local file. Done in a worker thread, as blocking I/O
must be, it costs a hand-over to the thread and back per request, which at 1 MiB requests was
most of the time a read of a cached blob took. But most of these reads hit the page cache:
``preadv2`` with ``RWF_NOWAIT`` reads them on the trio thread and refuses (``EAGAIN``) instead
of waiting for the disk. Only then, or when it reads less than asked (some pages not cached),
does the read go to a thread. The loop never blocks on a disk.

Two more hand-overs are avoided the same way. Opening a blob resolves its path from the
dentry cache alone (``openat2`` with ``RESOLVE_CACHED``, which refuses with ``EAGAIN`` where it
would have to read a directory from disk), so a walker's thousands of opens need no thread
either. And a file on tmpfs (no ``RWF_NOWAIT`` there, but nothing to wait for: its pages are
memory) is read on the loop too.

The page-cache read lands in a new ``bytearray`` per request (a FUSE reply is made from any
buffer). Reusing one scratch buffer would be safe only while nothing awaits between the read
and the reply; it measured no faster, so we keep the version that cannot serve another
request's bytes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
from pathlib import Path

import trio

_NOWAIT = getattr(os, "RWF_NOWAIT", None)
DISK_AHEAD = 8 << 20
_MEMORY_FILE_SYSTEMS = (0x01021994, 0x858458F6)  # TMPFS_MAGIC, RAMFS_MAGIC (linux/magic.h)
_SYS_OPENAT2 = 437
"""openat2's number in the unified syscall table (Linux 5.6+); alpha and mips number it
otherwise, so it is only called on these machines (elsewhere opens go to a thread):"""
_OPENAT2_MACHINES = {"x86_64", "i686", "i386", "aarch64", "armv7l", "riscv64", "ppc64le", "s390x"}
_RESOLVE_CACHED = 0x20
_AT_FDCWD = -100


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)
_cached_open_works = hasattr(_libc, "syscall") and os.uname().machine in _OPENAT2_MACHINES
_in_memory: dict[int, bool] = {}
"""Whether the file system of a device (``st_dev``) keeps its files in memory."""


def open_cached(path: Path) -> int | None:
    """A read-only descriptor of ``path`` if opening it needs no disk read, else None (open it
    in a thread then). Raises FileNotFoundError when the path is known not to exist."""
    global _cached_open_works
    if not _cached_open_works:
        return None
    how = _OpenHow(os.O_RDONLY | os.O_CLOEXEC, 0, _RESOLVE_CACHED)
    fd = _libc.syscall(_SYS_OPENAT2, _AT_FDCWD, bytes(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd >= 0:
        return int(fd)
    code = ctypes.get_errno()
    if code == errno.ENOENT:
        raise FileNotFoundError(code, os.strerror(code), str(path))
    if code in (errno.ENOSYS, errno.EINVAL, errno.EPERM):  # before Linux 5.12, or a seccomp filter
        _cached_open_works = False
    return None  # EAGAIN (not all cached), or anything else: the thread will say


def hold(fd: int, path: Path) -> bool:
    """Mark an open CAS file as in use, for as long as ``fd`` stays open: a shared ``flock``
    that the evictor (cas/eviction.py) must be able to turn exclusive before it unlinks. False
    when the blob is being evicted right now, or was since we opened it (the path no longer
    names our file): the caller closes ``fd`` and fetches the blob again. Non-blocking (the
    lock is not waited for; the ``stat`` finds the path in the dentry cache we just used)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        here = os.stat(path)
    except (BlockingIOError, FileNotFoundError):
        return False
    mine = os.fstat(fd)
    return (here.st_ino, here.st_dev) == (mine.st_ino, mine.st_dev)


def _in_memory_file(fd: int) -> bool:
    device = os.fstat(fd).st_dev
    known = _in_memory.get(device)
    if known is None:
        buffer = ctypes.create_string_buffer(256)  # struct statfs; f_type comes first
        known = _libc.fstatfs(fd, buffer) == 0 and (
            ctypes.c_long.from_buffer(buffer).value in _MEMORY_FILE_SYSTEMS
        )
        _in_memory[device] = known
    return known


async def pread(fd: int, size: int, offset: int, limiter: trio.CapacityLimiter) -> bytes:
    """``os.pread(fd, size, offset)``, from the page cache at once when it is all there."""
    if _in_memory_file(fd):  # tmpfs: no RWF_NOWAIT, and no disk to wait for
        return os.pread(fd, size, offset)
    if _NOWAIT is not None and size > 0:
        buffer = bytearray(size)
        try:
            got = os.preadv(fd, [buffer], offset, _NOWAIT)
        except BlockingIOError:
            got = -1
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            got = -1  # not offered by this file system: a thread it is
        if got == size:
            return buffer  # type: ignore[return-value]  # a FUSE reply takes any buffer
        if got >= 0 and offset + got >= os.fstat(fd).st_size:
            # short because the file ends there (the kernel asks for whole pages): all of it
            return memoryview(buffer)[:got]  # type: ignore[return-value]
    return await trio.to_thread.run_sync(_read_from_disk, fd, size, offset, limiter=limiter)


def _read_from_disk(fd: int, size: int, offset: int) -> bytes:
    """A read the page cache could not serve: ask the kernel to read on ahead of it too, so
    that the next requests of a sequential reader find their pages cached (the kernel's own
    read-ahead on the CAS file is tuned for its disk, not for the 1 MiB requests FUSE sends)."""
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, offset, size + DISK_AHEAD, os.POSIX_FADV_WILLNEED)
    return os.pread(fd, size, offset)
