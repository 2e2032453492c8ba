"""The kernel read-ahead of each open file, chosen when the open is answered.

The kernel sizes its FUSE read requests by the read-ahead of the open file, which it copies
from the mount's setting right after our answer to FUSE_OPEN (``file_ra_state_init`` in
``do_dentry_open``) and keeps for that open file's life. So what the setting is at the moment
an open is answered decides that open's reads: a file whose bytes are all local already can be
given a large read-ahead (1 MiB requests: a cached model reads at the disk's speed), while a
file still being fetched keeps the small one that keeps a lazy reader lazy. The mount
(``mount/kernel_read_ahead.py``) owns the setting; the operations only say, last thing before
answering an open, which kind of file it is, and when the kernel has certainly set the open
up (its first read or its release).

Every open also counts its read requests by size (``user.artifactfs.read_sizes`` on the root):
what the kernel really asked for, which is how a test sees which read-ahead an open got.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ..errors import ReadError
from ..sources.base import BlobReader

log = logging.getLogger(__name__)


class OpenReadAhead(Protocol):
    small_kib: int
    large_kib: int

    @property
    def attached(self) -> bool:
        """Whether it sets the mount's read-ahead (``user.artifactfs.read_ahead`` shows it)."""
        ...

    async def opening(self, fh: int, complete: bool) -> None:
        """Set the read-ahead for an open about to be answered (nothing may be awaited
        between this returning and the answer)."""
        ...

    def settled(self, fh: int) -> None:
        """The kernel has set that open up: it reads it or releases it."""
        ...


async def choose_for_open(read_ahead: OpenReadAhead | None, fh: int, reader: BlobReader) -> None:
    """The read-ahead of an open of ``reader``'s file: large if it is complete. A file whose
    state cannot be told gets the small one (never a reason to fail an open)."""
    if read_ahead is None:
        return
    try:
        complete = await reader.complete()
    except (OSError, ReadError) as exc:
        log.debug("read-ahead of an open file: taken as not complete (%s)", exc)
        complete = False
    await read_ahead.opening(fh, complete)
