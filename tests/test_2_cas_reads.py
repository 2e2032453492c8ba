"""Reads of local files for the kernel: the page-cache path on the loop and the thread path
must give exactly what ``os.pread`` gives, on a disk file system and on tmpfs (which refuses
``RWF_NOWAIT``), at the end of a file and past it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from artifactfs.cas import reads as local_reads

DATA = os.urandom(3 * 1024 * 1024 + 17)


@pytest.mark.parametrize("where", ["tmp_path", "shm"])
def test_reads_match_pread(where: str, tmp_path: Path) -> None:
    base = tmp_path if where == "tmp_path" else Path("/dev/shm")
    path = base / f"local-reads-{os.getpid()}.bin"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    try:
        cases = [(0, 1 << 20), (123, 4567), (len(DATA) - 10, 1 << 20), (len(DATA), 4096),
                 (len(DATA) + 99, 10), (0, 0)]  # fmt: skip

        async def read_all() -> list[bytes]:
            limiter = trio.CapacityLimiter(2)
            return [bytes(await local_reads.pread(fd, n, off, limiter)) for off, n in cases]

        cold = trio.run(read_all)  # after the write the pages are cached: the loop path
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the thread path, where honoured
        again = trio.run(read_all)
        expected = [os.pread(fd, n, off) for off, n in cases]
        assert cold == expected
        assert again == expected
    finally:
        os.close(fd)
        path.unlink()
