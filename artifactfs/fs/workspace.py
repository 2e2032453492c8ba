"""Writable FUSE operations: a workspace, i.e. a snapshot with an overlay on top.

``SnapshotOperations`` (operations.py) stays the read-only mount; this is the writable one.
Names, attributes and listings come from the overlay (``overlay/store.py``), which falls back to
the snapshot for what nobody touched. Bytes of an untouched file come from the mount's
``Content`` as in a read-only mount; the first write-open, truncate, setattr or setxattr of a
lower file copies it up (``_copy_up``) into a plain upper file, and from then on reads and
writes go to that file (``pread``/``pwrite`` on a descriptor per open handle, in a thread: FUSE
writes may be large).

Inode numbers: an entry of the snapshot keeps its row inode (what a read-only mount of the same
commit shows as its first generation), whether or not it was changed or renamed; created
entries get numbers from ``store.FIRST_CREATED`` up; both are stable across restarts. The
read-only files a worktree adds at the root (``RootFile``: git's ``.git``) get numbers just
below 2**63.

What the kernel may cache: untouched snapshot entries are immutable until changed, and every
change goes through this kernel, which updates its own caches; their entries and attributes
are cached like a read-only mount's. Entries of changed or created nodes are cached for a
second; attributes of upper files not at all (their size and times move with every write).
Negative entries: a second. A rebase (a refresh without changes) makes the kernel forget every
inode it holds and the root's names.

Errors: the store refuses what rename(2) & co refuse (``store.Refused``, answered with its
errno by gated.py); an ``OSError`` of an upper file becomes its errno here, never escapes.
Choices where POSIX leaves one: ``link`` is EPERM (hard links would need a link count per
node); ``mknod`` makes regular files, FIFOs and sockets (table nodes: the kernel does their
I/O), device nodes are EPERM; ``chown``/``chgrp`` do what the kernel's ``default_permissions``
allowed, kept in the node's row (no content copied); the root files are read-only: opening one
for writing is EACCES, and creating, removing or renaming over their names is EPERM;
``user.*`` and ``trusted.*`` xattrs live on upper files for files (setting one copies a lower
file up) and in the overlay's ``xattrs`` table for other nodes; other namespaces are ENOTSUP;
``user.artifactfs.*`` names are read-only (EPERM).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyfuse3
import trio

from ..cas import reads as cas_reads
from ..overlay import copyup
from ..overlay.store import Node, Overlay
from ..snapshot import ROOT_INODE, Kind, Row, SnapshotIndex
from ..sources.base import BlobReader, Content, LowerStat, RootFile
from . import attributes, xattrs
from .operations import FuseKernelCache, KernelCache
from .read_ahead import choose_for_open
from .state import MountState

log = logging.getLogger(__name__)

T = TypeVar("T")

ROOT_FILES_FIRST = (1 << 63) - 64
"""Inode numbers of the root's read-only files."""
CHANGED_TIMEOUT = 1.0
NEGATIVE_TIMEOUT = 1.0
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC
_ARTIFACTFS_PREFIX = xattrs.PREFIX
_MKNOD_KINDS = {stat.S_IFREG: Kind.FILE, stat.S_IFIFO: Kind.FIFO, stat.S_IFSOCK: Kind.SOCKET}
"""What ``mknod`` makes: FIFOs and sockets are table nodes without content (the kernel does
their I/O itself); device nodes are EPERM."""


@dataclass
class _Handle:
    ino: int
    fd: int | None = None
    """An upper file's descriptor (None: reading a lower file through ``reader``)."""
    reader: BlobReader | None = None
    root_file: bytes | None = None
    writable: bool = False
    written: bool = False
    """Written since the journal last heard of it."""
    journal_token: str = ""
    """The journal's token when it last heard of this handle's writes: once the journal has
    moved past it (a newer segment, fsmonitor tokens naming it), a write is recorded again."""


@dataclass
class _Copies:
    locks: dict[int, trio.Lock] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)
    """Inodes copied up by this worker (lower readers switch to the upper file)."""


class WorkspaceOperations(pyfuse3.Operations):
    def __init__(
        self,
        state: MountState,
        directory: Path,
        kernel: KernelCache | None = None,
        on_copy_up: Callable[[Row, Path], None] | None = None,
    ) -> None:
        super().__init__()
        self._state = state
        self._directory = directory
        self._kernel = kernel or FuseKernelCache()
        self._content: Content | None = None
        self._overlay: Overlay | None = None
        self._index: SnapshotIndex | None = None
        self._lookups: Counter[int] = Counter()
        self._opened: Counter[int] = Counter()
        self._handles: dict[int, _Handle] = {}
        self._directories: dict[int, int] = {}
        self._next_fh = 1
        self._root_files: dict[int, RootFile] = {}
        self._writer = trio.CapacityLimiter(1)
        """The overlay's changes run in a thread, one at a time."""
        self._io = trio.CapacityLimiter(16)
        self._copies = _Copies()
        self.on_copy_up = on_copy_up
        self._keeping = trio.CapacityLimiter(1)
        """Copied-up blobs kept for the worktree one at a time, off the write path."""
        """Told of each copy-up made from a whole local file (a worktree keeps the blob)."""

    # -- what the worker uses ---------------------------------------------------------------

    def read_through(self, content: Content) -> None:
        self._content = content

    @property
    def content(self) -> Content:
        if self._content is None:
            raise RuntimeError("no content to read through yet")
        return self._content

    @property
    def overlay(self) -> Overlay:
        if self._overlay is None:  # the gate lets nobody in before install
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._overlay

    async def install(self, index: SnapshotIndex) -> None:
        """Show ``index``: open the overlay over it, or rebase onto it (a refresh; raises
        ``WorkspaceChanged`` when there are changes, and nothing changes then)."""
        if self._overlay is None:
            self._overlay = await trio.to_thread.run_sync(Overlay.open, self._directory, index)
            self._index = index
            self._state.snapshot = index
            self._state.changed_paths = self._overlay.changed_paths_count
            self._state.changes.notify()
            return
        previous = self._index
        await trio.to_thread.run_sync(self._overlay.rebase, index, limiter=self._writer)
        self._index = index
        self._state.snapshot = index
        self._state.changes.notify()
        if previous is not None and previous is not index:
            previous.close()
            await self._forget_everything()

    async def discard_changes(self) -> None:
        """Throw every change away (``refresh --discard-changes``): the overlay is emptied and
        the kernel told to forget what it holds. Open upper files keep working on their
        (now unnamed) bytes until closed."""
        overlay = self.overlay
        await trio.to_thread.run_sync(overlay.discard, limiter=self._writer)
        self._copies = _Copies()
        self._state.changes.notify()
        await self._forget_everything()

    async def _forget_everything(self) -> None:
        """The tree changed behind the kernel's back: the root's names and every inode it
        holds are forgotten (changed entries' names expire within ``CHANGED_TIMEOUT``)."""
        names = [child.name for child in self.overlay.children(self._root(), limit=1 << 20)]
        await self._kernel.forget_entries(ROOT_INODE, names)
        for inode in [ROOT_INODE, *self._lookups]:
            with contextlib.suppress(OSError):  # ENOENT: the kernel dropped it meanwhile
                await self._kernel.forget_inode(inode)

    def show(self, root_file: RootFile) -> None:
        """Show ``root_file`` at the root (read-only), replacing one of the same name."""
        for ino, existing in self._root_files.items():
            if existing.name == root_file.name:
                self._root_files[ino] = root_file
                return
        self._root_files[ROOT_FILES_FIRST + len(self._root_files)] = root_file

    def stat_of(self, row: Row) -> LowerStat:
        """What ``getattr`` shows of an unchanged snapshot entry (for a worktree's index)."""
        meta = self._require_index().meta
        attrs = attributes.for_row(row, meta, row.inode)
        return LowerStat(
            inode=row.inode,
            mode=attrs.st_mode,
            size=attrs.st_size,
            mtime_ns=attrs.st_mtime_ns,
            uid=attrs.st_uid,
            gid=attrs.st_gid,
        )

    def close(self) -> None:
        for handle in self._handles.values():
            self._close_handle(handle)
        self._handles.clear()
        if self._overlay is not None:
            self._overlay.close()
        if self._index is not None:
            self._index.close()

    async def forget_cached(self, snapshot: SnapshotIndex, row: Row) -> None:
        if snapshot is self._index:
            await self._kernel.forget_inode(row.inode)

    def live_generations(self) -> int:
        return 1 if self._index is not None else 0

    def lookup_count(self, inode: int) -> int:
        return self._lookups[inode]

    # -- helpers ------------------------------------------------------------------------------

    def _require_index(self) -> SnapshotIndex:
        if self._index is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._index

    def _root(self) -> Node:
        node = self.overlay.get(ROOT_INODE)
        assert node is not None
        return node

    def _node(self, inode: int) -> Node:
        node = self.overlay.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _known(self, inode: int) -> bool:
        """The kernel holds a lookup on ``inode`` or a handle of it is open."""
        return self._lookups[inode] > 0 or self._opened[inode] > 0

    async def _change(self, call: Callable[..., T], *args: Any) -> T:
        """Run a change of the overlay in its thread (one at a time)."""
        return await trio.to_thread.run_sync(call, *args, limiter=self._writer)

    async def _attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        index = self._require_index()
        if not node.stored:
            row = node.row or index.get(node.ino)
            if row is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            if row.size_unknown:
                row = await self.content.with_size(index, row)
            return attributes.for_row(row, index.meta, node.ino)
        stamp = index.meta.commit_time * 1_000_000_000
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.ino
        attr.st_mode = node.st_mode
        attr.st_uid = _uid_of(node)
        attr.st_gid = _gid_of(node)
        attr.st_blksize = attributes.IO_SIZE
        attr.entry_timeout = CHANGED_TIMEOUT
        attr.attr_timeout = CHANGED_TIMEOUT
        if node.is_directory:
            attr.st_nlink = 2 + self.overlay.subdirectories(node)
            attr.st_size = 4096
        else:
            attr.st_nlink = 1 if node.linked else 0
        if node.is_file and node.upper:
            st = _stat_upper(self.overlay.upper_path(node.ino))
            attr.st_size = st.st_size
            attr.st_blocks = st.st_blocks
            attr.st_atime_ns = st.st_atime_ns
            attr.st_mtime_ns = st.st_mtime_ns
            # a chown or chmod is a row's change: its ctime counts too
            attr.st_ctime_ns = max(st.st_ctime_ns, node.ctime_ns or 0)
            attr.attr_timeout = 0.0
            return attr
        if node.is_file:
            row = self.overlay.lower_row(node)
            if row is not None and row.size_unknown:
                row = await self.content.with_size(index, row)
            attr.st_size = (row.size or 0) if row is not None else 0
        elif node.kind is Kind.SYMLINK:
            attr.st_size = len(node.target or b"")
        attr.st_blocks = (attr.st_size + attributes.BLOCK - 1) // attributes.BLOCK
        attr.st_mtime_ns = node.mtime_ns or stamp
        attr.st_atime_ns = node.atime_ns or attr.st_mtime_ns
        attr.st_ctime_ns = node.ctime_ns or node.mtime_ns or stamp
        return attr

    def _root_file_attributes(self, inode: int, root_file: RootFile) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.st_mode = stat.S_IFREG | 0o444
        attr.st_nlink = 1
        attr.st_uid = os.getuid()
        attr.st_gid = os.getgid()
        attr.st_size = len(root_file.content)
        attr.st_blksize = attributes.IO_SIZE
        stamp = self._require_index().meta.commit_time * 1_000_000_000
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = stamp
        attr.entry_timeout = CHANGED_TIMEOUT
        attr.attr_timeout = CHANGED_TIMEOUT
        return attr

    def _root_file_named(self, parent: int, name: bytes) -> int | None:
        if parent != ROOT_INODE:
            return None
        for ino, root_file in self._root_files.items():
            if root_file.name == name:
                return ino
        return None

    def _refuse_root_file(self, parent: int, *names: bytes) -> None:
        if any(self._root_file_named(parent, name) is not None for name in names):
            raise pyfuse3.FUSEError(errno.EPERM)

    async def _counted(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = await self._attributes(node)
        self._lookups[node.ino] += 1
        return attrs

    def _new_handle(self, handle: _Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        self._opened[handle.ino] += 1
        return fh

    def _close_handle(self, handle: _Handle) -> None:
        if handle.reader is not None:
            handle.reader.close()
            handle.reader = None
        if handle.fd is not None:
            try:
                os.close(handle.fd)
            except OSError as exc:
                log.warning("closing an upper file: %s", exc)
            handle.fd = None

    async def _drop_if_unused(self, inode: int) -> None:
        """An unlinked node that the kernel forgot and nobody has open goes away."""
        if inode >= ROOT_FILES_FIRST or self._known(inode) or self._overlay is None:
            return
        node = self._overlay.get(inode)
        if node is not None and node.parent == 0:
            await self._change(self._overlay.forgotten, inode)

    # -- names and attributes ----------------------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        root_file = self._root_file_named(parent_inode, name)
        if root_file is not None:
            self._lookups[root_file] += 1
            return self._root_file_attributes(root_file, self._root_files[root_file])
        parent = self._node(parent_inode)
        if not parent.is_directory:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        node = self.overlay.lookup(parent, name)
        if node is None:
            attr = attributes.negative_entry()
            attr.entry_timeout = NEGATIVE_TIMEOUT
            return attr
        return await self._counted(node)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self._overlay is None and inode == ROOT_INODE:
            return attributes.placeholder_root()
        if inode in self._root_files:
            return self._root_file_attributes(inode, self._root_files[inode])
        return await self._attributes(self._node(inode))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            remaining = self._lookups[inode] - count
            if remaining > 0:
                self._lookups[inode] = remaining
                continue
            if remaining < 0:
                log.warning("forget(%d, %d) below zero lookups", inode, count)
            del self._lookups[inode]
            await self._drop_if_unused(inode)

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        if inode in self._root_files:
            raise pyfuse3.FUSEError(errno.EPERM)
        node = self._node(inode)
        uid = attr.st_uid if fields.update_uid else None
        gid = attr.st_gid if fields.update_gid else None
        if (uid is not None and uid != _uid_of(node)) or (gid is not None and gid != _gid_of(node)):
            # default_permissions: the kernel allowed it (root, or the owner to a group of its
            # own); a row says so and no content is copied. The same owner again changes
            # nothing (``chown -R`` over an untouched tree leaves it untouched).
            node = await self._change(self.overlay.set_owner, inode, uid, gid)
        changes = (
            fields.update_size or fields.update_mode or fields.update_atime or fields.update_mtime
        )
        if node.is_file and changes and not node.upper:
            node = await self._copy_up(node)
        if fields.update_size:
            if not node.is_file:
                raise pyfuse3.FUSEError(errno.EISDIR if node.is_directory else errno.EINVAL)
            await self._upper_io(os.truncate, self.overlay.upper_path(inode), attr.st_size)
            await self._change(self.overlay.modified, inode)
        if fields.update_mode:
            node = await self._change(self.overlay.set_mode, inode, attr.st_mode)
        if fields.update_atime or fields.update_mtime:
            if node.is_file:
                await self._upper_io(_set_file_times, self.overlay.upper_path(inode), attr, fields)
                await self._change(self.overlay.modified, inode)
            else:
                atime = attr.st_atime_ns if fields.update_atime else None
                mtime = attr.st_mtime_ns if fields.update_mtime else None
                await self._change(self.overlay.set_times, inode, atime, mtime)
        return await self._attributes(self._node(inode))

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if node.kind is not Kind.SYMLINK or node.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        # default_permissions: the kernel checks modes itself and never asks
        return True

    # -- creating and removing ----------------------------------------------------------------

    async def _new(
        self, parent: int, name: bytes, kind: Kind, mode: int, target: bytes | None = None
    ) -> Node:
        self._refuse_root_file(parent, name)
        return await self._change(self.overlay.create, parent, name, kind, mode, target)

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        kind = _MKNOD_KINDS.get(stat.S_IFMT(mode))
        if kind is None:
            raise pyfuse3.FUSEError(errno.EPERM)  # device nodes
        return await self._counted(await self._new(parent_inode, name, kind, mode))

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return await self._counted(await self._new(parent_inode, name, Kind.DIRECTORY, mode))

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = await self._new(parent_inode, name, Kind.SYMLINK, 0o777, target)
        return await self._counted(node)

    async def create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node = await self._new(parent_inode, name, Kind.FILE, mode)
        info = await self._open_upper(node, flags)
        return info, await self._counted(node)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._refuse_root_file(parent_inode, name)
        await self._change(self.overlay.remove, parent_inode, name, False, self._known)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._refuse_root_file(parent_inode, name)
        await self._change(self.overlay.remove, parent_inode, name, True, self._known)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._refuse_root_file(parent_inode_old, name_old)
        self._refuse_root_file(parent_inode_new, name_new)
        if flags & ~(pyfuse3.RENAME_NOREPLACE | pyfuse3.RENAME_EXCHANGE):
            raise pyfuse3.FUSEError(errno.EINVAL)  # RENAME_WHITEOUT: for overlayfs only
        await self._change(
            self.overlay.rename,
            parent_inode_old,
            name_old,
            parent_inode_new,
            name_new,
            bool(flags & pyfuse3.RENAME_NOREPLACE),
            bool(flags & pyfuse3.RENAME_EXCHANGE),
            self._known,
        )

    # -- directories ---------------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        if not node.is_directory:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._next_fh
        self._next_fh += 1
        self._directories[fh] = inode
        if node.stored is False:
            row = self._require_index().get(inode)
            if row is not None:
                self.content.listed(self._require_index(), row)
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """``.`` is offset 1, ``..`` 2, a child its inode + 2 (children come in inode order,
        the root's read-only files last)."""
        inode = self._directories.get(fh)
        if inode is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        directory = self.overlay.get(inode)
        if directory is None:
            return  # removed meanwhile: nothing more to list
        parent = self.overlay.get(directory.parent) if directory.parent > 0 else None
        dots = ((b".", directory), (b"..", parent or directory))
        for offset, (name, node) in enumerate(dots, start=1):
            if start_id < offset:
                attrs = await self._attributes(node)
                if not pyfuse3.readdir_reply(token, name, attrs, offset):
                    return
        after = max(start_id - 2, 0)
        while True:
            children = self.overlay.children(directory, after=after, limit=256)
            if not children:
                break
            for child in children:
                attrs = await self._attributes(child)
                if not pyfuse3.readdir_reply(token, child.name, attrs, child.ino + 2):
                    return
                self._lookups[child.ino] += 1
                after = child.ino
        if inode == ROOT_INODE:
            for ino in sorted(self._root_files):
                if ino + 2 > start_id:
                    attrs = self._root_file_attributes(ino, self._root_files[ino])
                    if not pyfuse3.readdir_reply(token, self._root_files[ino].name, attrs, ino + 2):
                        return
                    self._lookups[ino] += 1

    async def releasedir(self, fh: int) -> None:
        self._directories.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        if self._overlay is not None:
            await self._change(self._overlay.sync)

    # -- files ---------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        root_file = self._root_files.get(inode)
        if root_file is not None:
            if flags & _WRITE_FLAGS:
                raise pyfuse3.FUSEError(errno.EACCES)
            fh = self._new_handle(_Handle(inode, root_file=root_file.content))
            return pyfuse3.FileInfo(fh=fh, keep_cache=True)
        node = self._node(inode)
        if node.is_directory:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if not node.is_file:
            raise pyfuse3.FUSEError(errno.ELOOP if node.kind is Kind.SYMLINK else errno.EINVAL)
        if flags & _WRITE_FLAGS and not node.upper:
            node = await self._copy_up(node)
        if node.upper:
            return await self._open_upper(node, flags)
        index = self._require_index()
        row = self.overlay.lower_row(node)
        if row is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        reader = self.content.reader(index, row)
        fh = self._new_handle(_Handle(inode, reader=reader))
        await choose_for_open(self._state.read_ahead, fh, reader)  # the last await: see there
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def _open_upper(self, node: Node, flags: int) -> pyfuse3.FileInfo:
        access = flags & os.O_ACCMODE
        backing = access | os.O_CLOEXEC | (flags & os.O_APPEND)  # never O_DIRECT, O_CREAT...
        path = self.overlay.upper_path(node.ino)
        fd = await self._upper_io(os.open, path, backing)
        handle = _Handle(node.ino, fd=fd, writable=access != os.O_RDONLY)
        if flags & os.O_TRUNC and handle.writable:
            try:
                await self._upper_io(os.ftruncate, fd, 0)
            except BaseException:
                os.close(fd)
                raise
            await self._change(self.overlay.modified, node.ino)
        fh = self._new_handle(handle)
        if self._state.read_ahead is not None:  # a local file: large reads cost nothing
            await self._state.read_ahead.opening(fh, True)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False)

    def _handle(self, fh: int) -> _Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return handle

    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._handle(fh)
        self._state.read_sizes[size] += 1
        if self._state.read_ahead is not None:
            self._state.read_ahead.settled(fh)
        if handle.root_file is not None:
            return handle.root_file[off : off + size]
        if handle.reader is not None and handle.ino in self._copies.done:
            # copied up since it was opened: from now on it reads what writers wrote
            handle.reader.close()
            handle.reader = None
            handle.fd = await self._upper_io(
                os.open, self.overlay.upper_path(handle.ino), os.O_RDONLY | os.O_CLOEXEC
            )
        if handle.reader is not None:
            return await handle.reader.read(off, size)
        assert handle.fd is not None
        try:
            return await cas_reads.pread(handle.fd, size, off, self._io)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handle(fh)
        if handle.fd is None or not handle.writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        written = await self._upper_io(os.pwrite, handle.fd, buf, off)
        if not handle.written or handle.journal_token != self.overlay.current_token():
            handle.written = True
            await self._change(self.overlay.modified, handle.ino)
            handle.journal_token = self.overlay.current_token()
        return written

    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._handle(fh)
        if handle.fd is not None:
            await self._upper_io(os.fdatasync if datasync else os.fsync, handle.fd)
        if handle.written:
            handle.written = False  # recorded again: the writes since the first one
            await self._change(self.overlay.modified, handle.ino)
        await self._change(self.overlay.sync)

    async def release(self, fh: int) -> None:
        if self._state.read_ahead is not None:
            self._state.read_ahead.settled(fh)
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        try:
            if handle.written:
                await self._change(self.overlay.modified, handle.ino)
        finally:
            self._close_handle(handle)
            self._opened[handle.ino] -= 1
            if self._opened[handle.ino] <= 0:
                del self._opened[handle.ino]
        await self._drop_if_unused(handle.ino)

    async def _upper_io(self, call: Callable[..., T], *args: Any) -> T:
        """Blocking I/O on an upper file, in a thread; its ``OSError`` becomes its errno."""
        try:
            return await trio.to_thread.run_sync(call, *args, limiter=self._io)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                log.error("an upper file of %s: %s", self._directory, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    # -- copy-up -------------------------------------------------------------------------------

    async def _copy_up(self, node: Node) -> Node:
        """Give a lower file an upper copy (once; concurrent callers wait for the first)."""
        lock = self._copies.locks.setdefault(node.ino, trio.Lock())
        async with lock:
            current = self._node(node.ino)
            if current.upper or not current.is_file:
                return current
            index = self._require_index()
            row = self.overlay.lower_row(current)
            if row is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            staging = self.overlay.staging_path(node.ino)
            mtime = index.meta.commit_time * 1_000_000_000
            local = await self.content.local_path(index, row)
            how = await self._upper_io(copyup.copy_file, local, staging, mtime)
            log.debug("copied up %d (%s)", node.ino, how)
            copied = await self._change(self.overlay.copied_up, node.ino)
            self._copies.done.add(node.ino)
            if self.on_copy_up is not None:
                # in the background: keeping a large blob (hash, deflate, fsync) must not hold
                # up the write that caused the copy-up (git finds it in the CAS meanwhile)
                trio.lowlevel.spawn_system_task(self._keep_copied, row, local)
            return copied

    async def _keep_copied(self, row: Row, local: Path) -> None:
        on_copy_up = self.on_copy_up
        if on_copy_up is None:
            return
        try:
            await trio.to_thread.run_sync(on_copy_up, row, local, limiter=self._keeping)
        except Exception:  # never raises by contract; a system task must not take trio down
            log.exception("keeping a copied-up blob failed")

    # -- extended attributes ---------------------------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if inode in self._root_files:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        if inode == ROOT_INODE and self._overlay is None:  # still preparing: the state only
            found = xattrs.root_values(self._state).get(name)
            if found is None:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            return found
        node = self._node(inode)
        if node.upper:
            if not _is_kept(name):  # never set here; e.g. security.capability, which the
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)  # kernel asks before every write
            return await self._upper_xattr(os.getxattr, node, name)
        value = self.overlay.xattr(inode, name) if _is_kept(name) else None
        if value is None and inode == ROOT_INODE:
            value = xattrs.root_values(self._state).get(name)
        elif value is None:
            row = self.overlay.lower_row(node)
            if row is not None:
                index = self._require_index()

                async def cached(row: Row) -> int:
                    return await self.content.cached_bytes(index, row)

                value = await xattrs.entry_value(row, name, cached)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        if inode in self._root_files:
            return []
        if inode == ROOT_INODE and self._overlay is None:
            return list(xattrs.root_values(self._state))
        node = self._node(inode)
        if node.upper:
            path = self.overlay.upper_path(inode)
            names = await self._upper_io(os.listxattr, path)
            found = [os.fsencode(name) for name in names]
            return [name for name in found if _listed(name, ctx)]
        if inode == ROOT_INODE:
            own = list(xattrs.root_values(self._state))
        else:
            row = self.overlay.lower_row(node)
            own = xattrs.entry_names(row) if row is not None else []
        return own + [name for name in self.overlay.xattr_names(inode) if _listed(name, ctx)]

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        node = await self._xattr_target(inode, name)
        if not node.is_file:  # directories, symlinks, FIFOs: kept in the table
            await self._change(self.overlay.set_xattr, inode, name, value)
            return
        if not node.upper:
            node = await self._copy_up(node)
        await self._upper_xattr(os.setxattr, node, name, value)
        await self._change(self.overlay.modified, inode)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = await self._xattr_target(inode, name)
        if not node.is_file:
            await self._change(self.overlay.remove_xattr, inode, name)
            return
        if not node.upper:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        await self._upper_xattr(os.removexattr, node, name)
        await self._change(self.overlay.modified, inode)

    async def _xattr_target(self, inode: int, name: bytes) -> Node:
        if name.startswith(_ARTIFACTFS_PREFIX) or inode in self._root_files:
            raise pyfuse3.FUSEError(errno.EPERM)
        if not _is_kept(name):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        return self._node(inode)

    async def _upper_xattr(self, call: Callable[..., T], node: Node, name: bytes, *args: Any) -> T:
        path = self.overlay.upper_path(node.ino)
        try:
            return await trio.to_thread.run_sync(call, path, name, *args, limiter=self._io)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    # -- the file system -------------------------------------------------------------------------

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """The truth about the file system the upper files are written to."""
        data = pyfuse3.StatvfsData()
        try:
            found = await trio.to_thread.run_sync(_statvfs_near, self._directory, limiter=self._io)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        data.f_bsize = found.f_bsize
        data.f_frsize = found.f_frsize
        data.f_blocks = found.f_blocks
        data.f_bfree = found.f_bfree
        data.f_bavail = found.f_bavail
        data.f_files = found.f_files
        data.f_ffree = found.f_ffree
        data.f_favail = found.f_favail
        data.f_namemax = 255
        return data


def _uid_of(node: Node) -> int:
    """A node's owner: the mount owner's until a chown says otherwise."""
    return os.getuid() if node.uid is None else node.uid


def _gid_of(node: Node) -> int:
    return os.getgid() if node.gid is None else node.gid


def _is_kept(name: bytes) -> bool:
    """An xattr this file system keeps: ``user.*`` (but ``user.artifactfs.*``, its own and
    read-only) and ``trusted.*`` (the kernel lets only CAP_SYS_ADMIN get or set those)."""
    if name.startswith(_ARTIFACTFS_PREFIX):
        return False
    return name.startswith((b"user.", b"trusted."))


def _listed(name: bytes, ctx: pyfuse3.RequestContext) -> bool:
    """Whether listxattr shows ``name`` to the caller: ``trusted.*`` only to root (as ext4
    and tmpfs list them only to CAP_SYS_ADMIN)."""
    return name.startswith(b"user.") or (name.startswith(b"trusted.") and ctx.uid == 0)


def _statvfs_near(directory: Path) -> os.statvfs_result:
    """The file system ``directory`` is on (its nearest existing ancestor before the workspace
    is made: ``df`` works while preparing too)."""
    while not directory.exists() and directory.parent != directory:
        directory = directory.parent
    return os.statvfs(directory)


def _stat_upper(path: Path) -> os.stat_result:
    """An upper file's own attributes (a stat of a local file the kernel just used: its
    inode is cached, so this does not wait for a disk)."""
    try:
        return os.stat(path)
    except OSError as exc:
        log.error("an upper file is missing: %s", exc)
        raise pyfuse3.FUSEError(errno.EIO) from None


def _set_file_times(
    path: Path, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields
) -> None:
    current = os.stat(path)
    atime = attr.st_atime_ns if fields.update_atime else current.st_atime_ns
    mtime = attr.st_mtime_ns if fields.update_mtime else current.st_mtime_ns
    os.utime(path, ns=(atime, mtime))
