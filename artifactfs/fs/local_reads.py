"""Read a local file (a CAS blob, a partial) for the kernel without a thread hop when we can.

Every FUSE read ends in a ``pread`` of a local file. Done in a worker thread, as blocking I/O
must be, it costs a hand-over to the thread and back per request, which at 1 MiB requests was
most of the time a read of a cached blob took. But most of these reads hit the page cache:
``preadv2`` with ``RWF_NOWAIT`` reads them on the trio thread and refuses (``EAGAIN``) instead
of waiting for the disk. Only then, or when it reads less than asked (some pages not cached),
does the read go to a thread. The loop never blocks on a disk.

The page-cache read lands in a new ``bytearray`` per request (pyfuse3 replies from any
buffer). Reusing one scratch buffer would be safe only while nothing awaits between the read
and the reply; it measured no faster, so we keep the version that cannot serve another
request's bytes.
"""

from __future__ import annotations

import contextlib
import errno
import os

import trio

_NOWAIT = getattr(os, "RWF_NOWAIT", None)
DISK_AHEAD = 8 << 20


async def pread(fd: int, size: int, offset: int, limiter: trio.CapacityLimiter) -> bytes:
    """``os.pread(fd, size, offset)``, from the page cache at once when it is all there."""
    if _NOWAIT is not None and size > 0:
        buffer = bytearray(size)
        try:
            got = os.preadv(fd, [buffer], offset, _NOWAIT)
        except BlockingIOError:
            got = -1
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            got = -1  # not offered by this file system (tmpfs, for one): a thread it is
        if got == size:
            return buffer  # type: ignore[return-value]  # pyfuse3 takes any buffer
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
