"""Read-only FUSE operations over a prepared snapshot, with contents served from the CAS.

These operations assume the snapshot is ready: ``GatedOperations`` guarantees it by waiting on
the ready gate before calling them (only the root's ``getattr``, ``getxattr`` and
``listxattr`` are called earlier). Contents are fetched on the first ``read`` of an open file,
never by ``lookup``, ``readdir`` or ``open``; a read at or past the known end of a file
fetches nothing.

Where the bytes come from is the mount's ``Content`` (``sources/base.py``): the operations
hand it the snapshot and row a program opened, and tell it what was listed (a hint of what will
be read next); they never know which source it is. Its domain errors (``errors.ReadError``)
become errno at the kernel-facing layer (gated.py).

Lookup counts are exact: every entry returned by ``lookup`` or ``readdir`` adds one, every
``forget`` removes what it says; when an older generation (see generations.py) has no count
left, its snapshot is closed.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import pyfuse3
import trio

from ..snapshot import ROOT_INODE, Kind, Row, SnapshotIndex
from ..sources.base import BlobReader, Content
from . import attributes, xattrs
from .generations import Generation, Generations
from .read_ahead import choose_for_open
from .state import MountState

log = logging.getLogger(__name__)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


@dataclass
class _OpenDirectory:
    generation: Generation
    row: Row


@dataclass
class _OpenFile:
    generation: Generation
    reader: BlobReader


class KernelCache(Protocol):
    """What the kernel caches of a mount, and how to make it forget."""

    async def forget_entries(self, parent: int, names: Iterable[bytes]) -> None: ...

    async def forget_inode(self, inode: int) -> None: ...


class FuseKernelCache:
    """The real thing: pyfuse3's notifications (the entry form is queued to its own thread,
    so it is safe even while requests on the same directory are running)."""

    async def forget_entries(self, parent: int, names: Iterable[bytes]) -> None:
        for name in names:
            pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)

    async def forget_inode(self, inode: int) -> None:
        await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inode)


class SnapshotOperations(pyfuse3.Operations):
    def __init__(self, state: MountState, kernel: KernelCache | None = None) -> None:
        super().__init__()
        self._kernel = kernel or FuseKernelCache()
        self._state = state
        self._content: Content | None = None
        self._generations = Generations(on_retire=self._retired)
        self._lookups: Counter[int] = Counter()
        self._files: dict[int, _OpenFile] = {}
        self._directories: dict[int, _OpenDirectory] = {}
        self._next_fh = 1

    # -- snapshots ------------------------------------------------------------------------------

    def read_through(self, content: Content) -> None:
        """Serve file contents from ``content`` (before the first snapshot is installed: the
        source that provides it may be known only once the mount is up)."""
        self._content = content

    @property
    def content(self) -> Content:
        if self._content is None:  # the gate lets nobody read before prepare succeeded
            raise RuntimeError("no content to read through yet")
        return self._content

    def _retired(self, index: SnapshotIndex) -> None:
        if self._content is not None:
            self._content.retired(index)

    async def install(self, index: SnapshotIndex) -> None:
        """Show ``index`` from now on: the first snapshot, or a newer one (a refresh).

        On a refresh the kernel is told that the root's names and attributes may have changed;
        everything below follows from the new root's entries.
        """
        previous = self._generations.current
        stale_names: set[bytes] = set()
        if previous is not None:
            stale_names = {row.name for row in _root_children(previous.index)}
        self._generations.install(index)
        self._state.snapshot = index
        self._state.changes.notify()
        if previous is None:
            return
        stale_names |= {row.name for row in _root_children(index)}
        await self._kernel.forget_entries(ROOT_INODE, sorted(stale_names))
        await self._kernel.forget_inode(ROOT_INODE)

    def close(self) -> None:
        self._generations.close()

    async def forget_cached(self, snapshot: SnapshotIndex, row: Row) -> None:
        """Make the kernel drop what it cached of an entry (its bytes were bad): the content's
        ``ContentHost`` side."""
        for generation in self._generations.showing(snapshot):
            await self._kernel.forget_inode(generation.kernel_inode(row.inode))

    def live_generations(self) -> int:
        return self._generations.live()

    # -- helpers ---------------------------------------------------------------------------

    def _node(self, inode: int) -> tuple[Generation, Row]:
        found = self._generations.resolve(inode)
        if found is None:  # the gate lets nobody here before prepare succeeded
            raise pyfuse3.FUSEError(errno.ENOENT)
        generation, row_inode = found
        row = generation.index.get(row_inode)
        if row is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return generation, row

    def _attributes(self, generation: Generation, row: Row) -> pyfuse3.EntryAttributes:
        return attributes.for_row(row, generation.index.meta, generation.kernel_inode(row.inode))

    def _counted(self, generation: Generation, row: Row) -> pyfuse3.EntryAttributes:
        """Attributes of an entry handed to the kernel, which now holds a lookup on it."""
        attrs = self._attributes(generation, row)
        self._lookups[attrs.st_ino] += 1
        generation.lookups += 1
        return attrs

    # -- names and attributes ----------------------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        generation, parent = self._node(parent_inode)
        row = generation.index.lookup(parent.inode, name)
        if row is None:
            return attributes.negative_entry()
        # an unknown size is answered as "not cached": the kernel asks getattr before use
        return self._counted(generation, row)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self._generations.current is None and inode == ROOT_INODE:
            return attributes.placeholder_root()
        generation, row = self._node(inode)
        if row.size_unknown:
            row = await self.content.with_size(generation.index, row)
        return self._attributes(generation, row)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            remaining = self._lookups[inode] - count
            if remaining > 0:
                self._lookups[inode] = remaining
            else:
                if remaining < 0:
                    log.warning("forget(%d, %d) below zero lookups", inode, count)
                del self._lookups[inode]
            self._generations.forgotten(inode, count)

    def lookup_count(self, inode: int) -> int:
        return self._lookups[inode]

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        _, row = self._node(inode)
        if row.kind is not Kind.SYMLINK or row.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return row.target

    # -- directories ---------------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        """A handle that keeps the generation it was opened in: a listing that a refresh
        interrupts goes on with the same tree."""
        generation, row = self._node(inode)
        if not row.kind.is_directory:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._new_handle()
        self._directories[fh] = _OpenDirectory(generation, row)
        self._generations.opened(generation)
        return fh

    def _new_handle(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """List ``.``, ``..`` and the children; offsets are 1, 2 and child row id + 2.

        ``.`` and ``..`` take no lookup reference (the kernel never forgets them); every child
        the kernel accepted does.
        """
        handle = self._directories.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        generation, directory = handle.generation, handle.row
        index = generation.index
        self.content.listed(index, directory)
        parent = index.get(directory.parent) or directory
        dots = ((b".", directory), (b"..", parent))
        for offset, (name, row) in enumerate(dots, start=1):
            attrs = self._attributes(generation, row)
            if start_id < offset and not pyfuse3.readdir_reply(token, name, attrs, offset):
                return
        after = max(start_id - 2, 0)
        while True:
            children = index.children(directory, after_inode=after, limit=256)
            if not children:
                return
            for child in children:
                attrs = self._attributes(generation, child)
                if not pyfuse3.readdir_reply(token, child.name, attrs, child.inode + 2):
                    return
                self._lookups[attrs.st_ino] += 1
                generation.lookups += 1
                after = child.inode

    async def releasedir(self, fh: int) -> None:
        handle = self._directories.pop(fh, None)
        if handle is not None:
            self._generations.closed(handle.generation)

    # -- files ---------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        generation, row = self._node(inode)
        if row.kind.is_directory:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if row.kind is not Kind.FILE and row.kind is not Kind.EXECUTABLE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        fh = self._new_handle()
        reader = self.content.reader(generation.index, row)
        self._files[fh] = _OpenFile(generation, reader)
        self._generations.opened(generation)
        await choose_for_open(self._state.read_ahead, fh, reader)  # the last await: see there
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._files.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        self._state.read_sizes[size] += 1
        if self._state.read_ahead is not None:
            self._state.read_ahead.settled(fh)
        return await handle.reader.read(off, size)

    async def release(self, fh: int) -> None:
        if self._state.read_ahead is not None:
            self._state.read_ahead.settled(fh)
        handle = self._files.pop(fh, None)
        if handle is None:
            return
        handle.reader.close()
        self._generations.closed(handle.generation)

    # -- extended attributes ---------------------------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if inode == ROOT_INODE:
            value = xattrs.root_values(self._state).get(name)
        else:
            generation, row = self._node(inode)

            async def cached(row: Row) -> int:
                return await self.content.cached_bytes(generation.index, row)

            value = await xattrs.entry_value(row, name, cached)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        if inode == ROOT_INODE:
            return list(xattrs.root_values(self._state))
        return xattrs.entry_names(self._node(inode)[1])

    # -- the file system -------------------------------------------------------------------------

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        snapshot = self._state.snapshot
        if snapshot is not None:
            data.f_blocks = (snapshot.meta.total_size + 4095) // 4096
            data.f_files = snapshot.meta.files
        return data


def _root_children(index: SnapshotIndex) -> list[Row]:
    root = index.get(ROOT_INODE)
    if root is None:
        return []
    return index.children(root, limit=root.child_count or 1)
