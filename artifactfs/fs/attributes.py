"""Entry attributes the kernel sees for snapshot entries.

Snapshot content is immutable, so the kernel may cache names and attributes for a long time;
the only exceptions are the placeholder root before the snapshot is ready and entries whose
size is not known yet, which are never cached.
"""

from __future__ import annotations

import os

import pyfuse3

from ..snapshot import Kind, Row, SnapshotMeta

IMMUTABLE_TIMEOUT = 24 * 3600.0
BLOCK = 512
IO_SIZE = 128 * 1024


def for_row(row: Row, meta: SnapshotMeta, inode: int) -> pyfuse3.EntryAttributes:
    """Attributes of ``row`` as the kernel knows it: as inode number ``inode``."""
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = inode
    attr.st_mode = row.kind.st_mode
    attr.st_nlink = 2 + row.subdirs if row.kind.is_directory else 1
    attr.st_uid = os.getuid()
    attr.st_gid = os.getgid()
    size = _size(row)
    attr.st_size = size
    attr.st_blksize = IO_SIZE
    attr.st_blocks = (size + BLOCK - 1) // BLOCK
    stamp = meta.commit_time * 1_000_000_000
    attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = stamp
    attr.entry_timeout = IMMUTABLE_TIMEOUT
    attr.attr_timeout = 0.0 if row.size_unknown else IMMUTABLE_TIMEOUT
    return attr


def _size(row: Row) -> int:
    if row.kind.is_directory:
        return 4096
    return row.size or 0


def placeholder_root() -> pyfuse3.EntryAttributes:
    """The root while preparing: an empty directory the kernel must not cache."""
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = pyfuse3.ROOT_INODE
    attr.st_mode = Kind.DIRECTORY.st_mode
    attr.st_nlink = 2
    attr.st_uid = os.getuid()
    attr.st_gid = os.getgid()
    attr.st_size = 4096
    attr.st_blksize = IO_SIZE
    attr.entry_timeout = 0.0
    attr.attr_timeout = 0.0
    return attr


def negative_entry() -> pyfuse3.EntryAttributes:
    """A cached "no such entry": names absent from an immutable snapshot stay absent."""
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = 0
    attr.entry_timeout = IMMUTABLE_TIMEOUT
    return attr
