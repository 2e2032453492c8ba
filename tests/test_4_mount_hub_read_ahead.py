"""Each open's kernel read-ahead (fs/read_ahead.py, mount/kernel_read_ahead.py): a Hub file
already complete in the store is read in large requests, a file still being fetched in the
small ones that keep a lazy reader lazy. What the kernel asks for is read back from the
mount's ``user.artifactfs.read_sizes`` (read requests by size)."""

from __future__ import annotations

import errno
import hashlib
import os
import random
from collections import Counter
from pathlib import Path

import xattr

from tests.conftest import hub_env
from tests.helpers.hub import HubServer
from tests.helpers.mounts import mounted
from tests.helpers.waiting import wait_for

KiB, MiB = 1 << 10, 1 << 20
SMALL = 128 * KiB
LARGE = 1 * MiB
"""FUSE's largest request (256 pages): what a 4 MiB read-ahead gives."""


def read_sizes(mnt: Path) -> Counter[int]:
    text = xattr.getxattr(str(mnt), "user.artifactfs.read_sizes").decode()
    return Counter({int(size): int(n) for size, n in (line.split(":") for line in text.split())})


def chosen_per_open(mnt: Path) -> bool:
    """Whether the mount sets each open's read-ahead (128 KiB, or 4 MiB for complete files)."""
    try:
        return xattr.getxattr(str(mnt), "user.artifactfs.read_ahead") == b"128 4096"
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return False
        raise


def read_afresh(path: Path) -> bytes:
    """The whole file, read past the kernel's page cache of it (kept across opens)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        chunks = []
        while chunk := os.read(fd, MiB):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def requests_for(mnt: Path, path: Path) -> tuple[bytes, Counter[int]]:
    before = read_sizes(mnt)
    data = read_afresh(path)
    return data, read_sizes(mnt) - before


def kept(home: Path, content: bytes) -> Path:
    hex_digest = hashlib.sha256(content).hexdigest()
    return home / "cas" / "sha256" / hex_digest[:2] / hex_digest


def test_complete_files_get_large_reads_and_partial_ones_small(
    hub: HubServer, tmp_path: Path, mnt: Path, home: Path
) -> None:
    rng = random.Random(14)
    files = {f"weights/{name}.bin": rng.randbytes(8 * MiB) for name in ("a", "b", "c")}
    hub.create_repo("org/readahead", files)
    a, b, c = (mnt / name for name in sorted(files))
    env = hub_env(hub, tmp_path)
    with mounted("hf://org/readahead", mnt, home, env=env):
        wait_for(lambda: chosen_per_open(mnt), 30, "the read-ahead chosen open by open")
        data, cold = requests_for(mnt, a)  # fetched while read: small requests
        assert data == files["weights/a.bin"]
        assert cold and max(cold) <= SMALL, cold
        wait_for(lambda: kept(home, data).exists(), 30, "a.bin verified and kept")

        data, warm = requests_for(mnt, a)  # complete now: large requests
        assert data == files["weights/a.bin"]
        assert max(warm) == LARGE and warm[LARGE] >= 4, warm

        # a complete file held open does not lend its read-ahead to a partial one opened next
        held = os.open(a, os.O_RDONLY)
        try:
            data, cold = requests_for(mnt, b)
        finally:
            os.close(held)
        assert data == files["weights/b.bin"]
        assert max(cold) <= SMALL, cold

    # a new worker on the same store: a.bin is complete from its first open
    with mounted("hf://org/readahead", mnt, home, env=env):
        wait_for(lambda: chosen_per_open(mnt), 30, "the read-ahead chosen open by open")
        data, warm = requests_for(mnt, a)
        assert data == files["weights/a.bin"]
        assert max(warm) == LARGE, warm
        data, cold = requests_for(mnt, c)
        assert data == files["weights/c.bin"]
        assert max(cold) <= SMALL, cold
