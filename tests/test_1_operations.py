"""The FUSE operations without a mount: lookup counts, negative entries, attributes, xattrs.

(The same operations are exercised through the kernel by the test_4 files.)
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio

from artifactfs.fs.operations import SnapshotOperations
from artifactfs.fs.state import MountState
from artifactfs.snapshot import ROOT_INODE, Kind, NewEntry
from artifactfs.sources import open_source, parse_source
from tests.helpers.snapshots import snapshot_of
from tests.helpers.sources import settings_for

TREE = {
    "root": [
        NewEntry(b"dir", Kind.DIRECTORY, "d" * 40),
        NewEntry(b"file", Kind.FILE, "f" * 40, 5),
        NewEntry(b"tool", Kind.EXECUTABLE, "e" * 40, 0),
        NewEntry(b"link", Kind.SYMLINK, "1" * 40, 4, b"file"),
    ],
    "dir": [NewEntry(b"inner", Kind.FILE, "2" * 40, 7)],
}


class RecordingKernel:
    """Stands in for the kernel's caches (there is no mount here): records what we forget."""

    def __init__(self) -> None:
        self.forgotten: list[tuple[int, bytes | None]] = []

    async def forget_entries(self, parent: int, names: Iterable[bytes]) -> None:
        self.forgotten += [(parent, name) for name in names]

    async def forget_inode(self, inode: int) -> None:
        self.forgotten.append((inode, None))


KERNEL = RecordingKernel()


def run(tmp_path: Path, body: Callable[[SnapshotOperations], Awaitable[None]]) -> None:
    state = MountState("git://example/x", None)
    KERNEL.forgotten.clear()
    operations = SnapshotOperations(state, kernel=KERNEL)
    spec = parse_source("git://127.0.0.1:9/never-asked.git")  # these tests never fetch
    source = open_source(spec, settings_for(tmp_path))
    operations.read_through(source.open_content(operations))

    async def main() -> None:
        await operations.install(snapshot_of(tmp_path, TREE, "9" * 40))
        state.gate.open()
        await body(operations)

    try:
        trio.run(main)
    finally:
        operations.close()


CTX: Any = None


def test_lookup_counts_are_exact(tmp_path: Path) -> None:
    async def body(ops: SnapshotOperations) -> None:
        first = await ops.lookup(ROOT_INODE, b"file", CTX)
        again = await ops.lookup(ROOT_INODE, b"file", CTX)
        assert first.st_ino == again.st_ino
        inode = first.st_ino
        assert ops.lookup_count(inode) == 2
        await ops.forget([(inode, 1)])
        assert ops.lookup_count(inode) == 1
        await ops.forget([(inode, 1)])
        assert ops.lookup_count(inode) == 0
        missing = await ops.lookup(ROOT_INODE, b"nope", CTX)
        assert missing.st_ino == 0 and missing.entry_timeout > 0  # a cached negative entry
        assert ops.lookup_count(0) == 0

    run(tmp_path, body)


def test_attributes_follow_git_modes(tmp_path: Path) -> None:
    async def body(ops: SnapshotOperations) -> None:
        root = await ops.getattr(ROOT_INODE, CTX)
        assert stat.S_ISDIR(root.st_mode) and root.st_nlink == 3  # "." + ".." + dir
        for name, mode, size in [
            (b"file", stat.S_IFREG | 0o644, 5),
            (b"tool", stat.S_IFREG | 0o755, 0),
            (b"link", stat.S_IFLNK | 0o777, 4),
        ]:
            attr = await ops.lookup(ROOT_INODE, name, CTX)
            assert (attr.st_mode, attr.st_size) == (mode, size), name
            assert attr.st_mtime_ns == 1_700_000_000 * 10**9
        link = await ops.lookup(ROOT_INODE, b"link", CTX)
        assert await ops.readlink(link.st_ino, CTX) == b"file"

    run(tmp_path, body)


def test_errors_are_errnos(tmp_path: Path) -> None:
    async def body(ops: SnapshotOperations) -> None:
        file = await ops.lookup(ROOT_INODE, b"file", CTX)
        directory = await ops.lookup(ROOT_INODE, b"dir", CTX)
        cases = [
            (ops.getattr(999, CTX), errno.ENOENT),
            (ops.opendir(file.st_ino, CTX), errno.ENOTDIR),
            (ops.open(directory.st_ino, 0, CTX), errno.EISDIR),
            (ops.open(file.st_ino, 1, CTX), errno.EROFS),  # O_WRONLY
            (ops.readlink(file.st_ino, CTX), errno.EINVAL),
            (ops.read(12345, 0, 10), errno.EBADF),
            (ops.getxattr(file.st_ino, b"user.other", CTX), pyfuse3.ENOATTR),
        ]
        for call, code in cases:
            with pytest.raises(pyfuse3.FUSEError) as raised:
                await call
            assert raised.value.errno == code

    run(tmp_path, body)


def test_extended_attributes(tmp_path: Path) -> None:
    async def body(ops: SnapshotOperations) -> None:
        assert await ops.getxattr(ROOT_INODE, b"user.artifactfs.state", CTX) == b"ready"
        assert await ops.getxattr(ROOT_INODE, b"user.artifactfs.commit", CTX) == b"9" * 40
        file = await ops.lookup(ROOT_INODE, b"file", CTX)
        assert await ops.getxattr(file.st_ino, b"user.artifactfs.oid", CTX) == b"f" * 40
        assert await ops.getxattr(file.st_ino, b"user.artifactfs.cached", CTX) == b"0"
        link = await ops.lookup(ROOT_INODE, b"link", CTX)
        assert await ops.listxattr(link.st_ino, CTX) == []
        fh = (await ops.open(file.st_ino, 0, CTX)).fh
        assert await ops.read(fh, 5, 100) == b""  # at the end: nothing to fetch
        await ops.release(fh)

    run(tmp_path, body)


def test_generations_keep_old_directories_consistent_and_retire(tmp_path: Path) -> None:
    """A refresh: the root shows the new tree; a directory looked up before keeps the old one
    (nothing half old, half new); the old snapshot closes once the kernel forgot it all."""
    newer = {
        "root": [
            NewEntry(b"dir", Kind.DIRECTORY, "3" * 40),
            NewEntry(b"new", Kind.FILE, "4" * 40, 1),
        ],
        "dir": [NewEntry(b"changed", Kind.FILE, "5" * 40, 2)],
    }

    async def body(ops: SnapshotOperations) -> None:
        old_dir = await ops.lookup(ROOT_INODE, b"dir", CTX)
        old_inner = await ops.lookup(old_dir.st_ino, b"inner", CTX)
        await ops.install(snapshot_of(tmp_path, newer, "8" * 40))
        assert ops.live_generations() == 2
        names = [b"dir", b"file", b"link", b"new", b"tool"]
        assert KERNEL.forgotten == [(ROOT_INODE, n) for n in names] + [(ROOT_INODE, None)]
        new_dir = await ops.lookup(ROOT_INODE, b"dir", CTX)
        assert new_dir.st_ino != old_dir.st_ino
        assert (await ops.lookup(new_dir.st_ino, b"changed", CTX)).st_size == 2
        assert (await ops.lookup(new_dir.st_ino, b"inner", CTX)).st_ino == 0
        assert (await ops.lookup(old_dir.st_ino, b"inner", CTX)).st_ino == old_inner.st_ino
        assert (await ops.lookup(old_dir.st_ino, b"changed", CTX)).st_ino == 0
        assert (await ops.getattr(old_inner.st_ino, CTX)).st_size == 7
        assert (await ops.lookup(ROOT_INODE, b"file", CTX)).st_ino == 0  # gone in the new tree
        await ops.forget([(old_dir.st_ino, 1), (old_inner.st_ino, 2)])
        assert ops.live_generations() == 1
        with pytest.raises(pyfuse3.FUSEError):
            await ops.getattr(old_inner.st_ino, CTX)

    run(tmp_path, body)


def test_older_generations_hold_no_descriptors(tmp_path: Path) -> None:
    """32 refreshes while the kernel still knows an entry of every generation: the old
    snapshots stay usable, but only the current one keeps its SQLite descriptors open."""

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def body(ops: SnapshotOperations) -> None:
        held = [await ops.lookup(ROOT_INODE, b"dir", CTX)]
        before = descriptors()
        for number in range(32):
            tree = {"root": [NewEntry(b"dir", Kind.DIRECTORY, "3" * 40)], "dir": []}
            await ops.install(snapshot_of(tmp_path, tree, f"{number:040x}"))
            held.append(await ops.lookup(ROOT_INODE, b"dir", CTX))
        assert ops.live_generations() == 33
        assert descriptors() <= before + 3  # the current snapshot's, not 3 per generation
        for attr in held:  # every old directory still answers (its index opened again)
            assert (await ops.getattr(attr.st_ino, CTX)).st_ino == attr.st_ino

    run(tmp_path, body)
