"""The writable operations in-process (no kernel): the root files a worktree adds, ``stat_of``
against ``getattr``, and exact lookup counts through create, readdir and forget."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio

from artifactfs.fs.state import MountState
from artifactfs.fs.workspace import ROOT_FILES_FIRST, WorkspaceOperations
from artifactfs.overlay.store import WorkspaceChanged
from artifactfs.snapshot import ROOT_INODE, DirectoryListing, Kind, NewEntry, SnapshotIndex
from artifactfs.snapshot.index import snapshot_path, write_snapshot
from artifactfs.sources.base import RootFile
from tests.helpers.inprocess import Listing, RecordingKernel, collecting_readdir

CTX: Any = None
TREE = {
    "root": [
        NewEntry(b"dir", Kind.DIRECTORY, "a" * 40),
        NewEntry(b"file.txt", Kind.FILE, "b" * 40, 10),
        NewEntry(b"tool", Kind.EXECUTABLE, "c" * 40, 7),
        NewEntry(b"link", Kind.SYMLINK, "d" * 40, 8, b"file.txt"),
    ],
    "dir": [NewEntry(b"inner", Kind.FILE, "e" * 40, 3)],
}
GITFILE = RootFile(b".git", b"gitdir: /somewhere/git\n")


def _listing(key: str) -> DirectoryListing[str]:
    entries = TREE[key]
    return DirectoryListing(
        entries, [e.name.decode() if e.kind.is_directory else None for e in entries]
    )


class _ListingOnly:
    """A content that is only told of listings (these tests read no lower bytes)."""

    def listed(self, snapshot: SnapshotIndex, directory: Any) -> None:
        pass


def _operations(tmp_path: Path) -> tuple[WorkspaceOperations, SnapshotIndex]:
    path = snapshot_path(tmp_path, "7" * 40)
    write_snapshot(path, "7" * 40, "sha1", 1_700_000_000, "root", _listing)
    index = SnapshotIndex(path)
    ops = WorkspaceOperations(MountState("mem://x", None), tmp_path / "ws", RecordingKernel())
    ops.read_through(_ListingOnly())  # type: ignore[arg-type]
    return ops, index


def test_root_files_are_listed_readable_and_protected(tmp_path: Path) -> None:
    ops, index = _operations(tmp_path)

    async def main() -> None:
        await ops.install(index)
        ops.show(GITFILE)
        attrs = await ops.lookup(ROOT_INODE, b".git", CTX)
        assert attrs.st_ino == ROOT_FILES_FIRST and attrs.st_size == len(GITFILE.content)
        fh = await ops.opendir(ROOT_INODE, CTX)
        listing = Listing()
        with collecting_readdir():
            await ops.readdir(fh, 0, listing)  # type: ignore[arg-type]
        await ops.releasedir(fh)
        names = [entry.name for entry in listing.entries]
        assert names == [b".", b"..", b"dir", b"file.txt", b"tool", b"link", b".git"]
        info = await ops.open(ROOT_FILES_FIRST, os.O_RDONLY, CTX)
        assert await ops.read(info.fh, 0, 100) == GITFILE.content
        await ops.release(info.fh)

        async def refused(call: Any) -> int:
            try:
                await call
            except pyfuse3.FUSEError as exc:
                return exc.errno
            return 0

        assert await refused(ops.open(ROOT_FILES_FIRST, os.O_WRONLY, CTX)) == errno.EACCES
        assert await refused(ops.unlink(ROOT_INODE, b".git", CTX)) == errno.EPERM
        assert await refused(ops.mkdir(ROOT_INODE, b".git", 0o755, CTX)) == errno.EPERM
        assert await refused(ops.rename(ROOT_INODE, b"tool", ROOT_INODE, b".git", 0, CTX)) == (
            errno.EPERM
        )
        # every entry handed out counts once: lookup (1) + readdir (1) for .git
        assert ops.lookup_count(ROOT_FILES_FIRST) == 2
        await ops.forget([(ROOT_FILES_FIRST, 2)])
        assert ops.lookup_count(ROOT_FILES_FIRST) == 0
        ops.close()

    trio.run(main)


@pytest.mark.parametrize("name", [b"file.txt", b"tool", b"link"])
def test_stat_of_is_what_getattr_shows(tmp_path: Path, name: bytes) -> None:
    ops, index = _operations(tmp_path)

    async def main() -> None:
        await ops.install(index)
        row = index.lookup(ROOT_INODE, name)
        assert row is not None
        attrs = await ops.getattr(row.inode, CTX)
        seen = ops.stat_of(row)
        assert (seen.inode, seen.mode, seen.size, seen.mtime_ns, seen.uid, seen.gid) == (
            attrs.st_ino,
            attrs.st_mode,
            attrs.st_size,
            attrs.st_mtime_ns,
            attrs.st_uid,
            attrs.st_gid,
        )
        ops.close()

    trio.run(main)


def test_lookup_counts_stay_exact_through_changes(tmp_path: Path) -> None:
    ops, index = _operations(tmp_path)

    async def main() -> None:
        await ops.install(index)
        info, attrs = await ops.create(ROOT_INODE, b"new", 0o644, os.O_RDWR, CTX)
        assert await ops.write(info.fh, 0, b"abc") == 3
        await ops.release(info.fh)
        made = attrs.st_ino
        looked = await ops.lookup(ROOT_INODE, b"new", CTX)
        assert looked.st_ino == made and looked.st_size == 3
        assert ops.lookup_count(made) == 2
        await ops.unlink(ROOT_INODE, b"new", CTX)  # still known: kept, unlinked
        assert (await ops.getattr(made, CTX)).st_nlink == 0
        await ops.forget([(made, 2)])
        assert ops.lookup_count(made) == 0
        assert os.listdir(tmp_path / "ws" / "upper") == []  # gone with the last reference
        ops.close()

    trio.run(main)


def test_a_refresh_moves_only_without_changes_or_after_discarding_them(tmp_path: Path) -> None:
    ops, index = _operations(tmp_path)
    (tmp_path / "next").mkdir()
    path = snapshot_path(tmp_path / "next", "8" * 40)
    write_snapshot(path, "8" * 40, "sha1", 1_700_000_100, "root", _listing)
    kernel = ops._kernel
    assert isinstance(kernel, RecordingKernel)

    async def main() -> None:
        await ops.install(index)
        info, attrs = await ops.create(ROOT_INODE, b"mine", 0o644, os.O_RDWR, CTX)
        await ops.release(info.fh)
        following = SnapshotIndex(path)
        with pytest.raises(WorkspaceChanged):
            await ops.install(following)
        assert ops.overlay.base_commit == "7" * 40
        await ops.discard_changes()
        assert attrs.st_ino in kernel.forgotten_inodes  # the kernel is told
        assert (await ops.lookup(ROOT_INODE, b"mine", CTX)).st_ino == 0
        await ops.install(following)
        assert ops.overlay.base_commit == "8" * 40
        assert (await ops.getattr(ROOT_INODE, CTX)).st_mtime_ns == 1_700_000_100 * 10**9
        ops.close()

    trio.run(main)
