"""The least a pyfuse3 file system can do to serve a file: the kernel's and pyfuse3's own limit.

``python -m scripts.benchlib.minimal_fuse BACKING MOUNTPOINT`` mounts one read-only file, ``f``,
whose reads are ``os.pread`` of ``BACKING`` on the trio loop (no thread hop, no checks),
opened with ``keep_cache`` and attributes valid for an hour: what a FUSE file system written
in Python cannot beat. The cached-read benchmark reads it beside an artifactfs mount to show
how far from that limit the mount is (issue 14: "the documented kernel limit for FUSE
page-cache reads, measured with a minimal pyfuse3 filesystem"). Stops on SIGTERM or unmount.

``--writes thread`` or ``--writes inline`` make ``f`` writable too (truncate, write, fsync),
each write an ``os.pwrite`` of ``BACKING`` in a worker thread (what a file system whose loop
must never block on a disk does, as artifactfs does) or on the loop itself (nothing in Python
can write faster through FUSE): the workspace benchmark's limit for writes (issue 13).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyfuse3
import trio

from .cli import BenchError
from .mounts import MountTable

FILE_INODE = pyfuse3.ROOT_INODE + 1
NAME = b"f"


class OneFile(pyfuse3.Operations):
    def __init__(self, backing: str, writes: str | None = None) -> None:
        super().__init__()
        self.writes = writes
        self.fd = os.open(backing, (os.O_RDONLY if writes is None else os.O_RDWR) | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size

    def _attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        attributes = pyfuse3.EntryAttributes()
        attributes.st_ino = inode
        attributes.entry_timeout = attributes.attr_timeout = 3600
        if inode == pyfuse3.ROOT_INODE:
            attributes.st_mode = stat.S_IFDIR | 0o755
            attributes.st_nlink = 2
        else:
            attributes.st_mode = stat.S_IFREG | (0o444 if self.writes is None else 0o644)
            attributes.st_nlink = 1
            attributes.st_size = self.size
        return attributes

    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        return self._attributes(inode)

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == pyfuse3.ROOT_INODE and name == NAME:
            return self._attributes(FILE_INODE)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, self._attributes(FILE_INODE), 1)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(self.fd, size, off)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if self.writes == "inline":
            written = os.pwrite(self.fd, buf, off)
        else:
            written = await trio.to_thread.run_sync(os.pwrite, self.fd, buf, off)
        self.size = max(self.size, off + written)
        return written

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        if fields.update_size:
            await trio.to_thread.run_sync(os.ftruncate, self.fd, attr.st_size)
            self.size = attr.st_size
        return self._attributes(inode)

    async def fsync(self, fh: int, datasync: bool) -> None:
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, self.fd)


async def serve() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pyfuse3.main)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                pyfuse3.terminate()
                return


@contextlib.contextmanager
def minimal_mount(backing: Path, mountpoint: Path, writes: str | None = None) -> Iterator[Path]:
    """The minimal file system serving ``backing`` at ``mountpoint`` (created), in its own
    process; yields the path of its file, unmounted and stopped however the block ends."""
    mountpoint.mkdir()
    command = [sys.executable, "-m", "scripts.benchlib.minimal_fuse", str(backing), str(mountpoint)]
    if writes is not None:
        command += ["--writes", writes]
    process = subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent.parent)
    try:
        table = MountTable()
        deadline = time.monotonic() + 30
        while table.fs_type_at(mountpoint) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError("the minimal pyfuse3 file system did not mount")
            time.sleep(0.02)
        os.listdir(mountpoint)  # INIT answered
        yield mountpoint / NAME.decode()
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchlib.minimal_fuse")
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--writes", choices=("thread", "inline"))
    args = parser.parse_args()
    options = set(pyfuse3.default_options) | {"fsname=minimal-pyfuse3"}
    if args.writes is None:
        options.add("ro")
    pyfuse3.init(OneFile(args.backing, args.writes), args.mountpoint, options)
    try:
        trio.run(serve)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
