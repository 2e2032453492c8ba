"""git's untracked cache (the index's ``UNTR`` extension), written with the index of a new git
directory, so that the first ``git status`` in a mount reads no directory.

Without it, git's first status walks the whole tree for untracked files (``opendir`` and
``readdir`` of every directory, through FUSE: 2.1 s on Django, nine times a checkout's), and
only then writes the cache it uses from the second status on. A snapshot has no untracked
files, so the cache that walk would produce is known before it: every directory is *valid*
and lists no untracked entry, with the blob id of its ``.gitignore``, if any. Together with
the ``FSMN`` extension (git_index.py), which makes git trust a valid directory unless the
fsmonitor hook names a path in it, git then visits only what changed in the overlay.

The layout follows git's index format documentation (``gitformat-index``, "Untracked
cache"):

- the identity of the cache's place: ``Location <work tree>, system <uname sysname>`` and a
  NUL, as a varint-prefixed string. git drops a cache made for another place and, with
  ``core.untrackedCache = true`` (our config), silently builds its own (a mount bind-mounted
  elsewhere in a container costs the walk once, as without this);
- the stat data and object ids of ``$GIT_DIR/info/exclude`` and ``core.excludesFile`` (the
  latter depends on the user: we say "absent"; a user with one makes git rebuild the cache
  once), the flags of the directory walk the cache is for (``git status``'s default:
  ``DIR_SHOW_OTHER_DIRECTORIES | DIR_HIDE_EMPTY_DIRECTORIES``), and the per-directory ignore
  file's name, ``.gitignore``;
- the directories, depth first, children in byte order: untracked count (0), child count,
  name; then three EWAH bitmaps (valid: all; check-only: none; ignore-file id known: those
  with a ``.gitignore``), the stat data of each valid directory, the ``.gitignore`` ids, and a
  NUL.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dulwich.index import IndexExtension

from ..base import LowerStat

SIGNATURE = b"UNTR"
DIR_SHOW_OTHER_DIRECTORIES = 1 << 1
DIR_HIDE_EMPTY_DIRECTORIES = 1 << 2
STATUS_DIR_FLAGS = DIR_SHOW_OTHER_DIRECTORIES | DIR_HIDE_EMPTY_DIRECTORIES
"""The walk ``git status`` does unless ``status.showUntrackedFiles = all`` (then git rebuilds
the cache once for its own flags)."""
IGNORE_FILE = b".gitignore"
_U32 = 0xFFFFFFFF
_NO_STAT = bytes(36)


@dataclass
class CachedDirectory:
    """One directory of the snapshot as the cache records it."""

    name: bytes
    stat: LowerStat | None
    ignore_file_id: bytes | None = None
    """The raw object id of its ``.gitignore`` (None: it has none)."""
    children: list[CachedDirectory] = field(default_factory=list)
    untracked: list[bytes] = field(default_factory=list)
    """Names in it that the index leaves out (git's status lists them as untracked)."""

    def depth_first(self) -> Iterator[CachedDirectory]:
        yield self
        for child in sorted(self.children, key=lambda child: child.name):
            yield from child.depth_first()


def encode_varint(value: int) -> bytes:
    """git's variable-width integer (varint.c; the offset encoding of packs): seven bits a
    byte, most significant first, each continued byte holding one less than it says."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        value -= 1
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def ewah(bits: list[bool]) -> bytes:
    """An EWAH bitmap of ``bits`` as git serialises one: its size in bits, its 64-bit words
    (here one marker word with no run and every word after it literal, bit ``i`` of word ``w``
    standing for position ``64 w + i``), and the position of the last marker word."""
    literals = []
    for start in range(0, len(bits), 64):
        word = 0
        for offset, bit in enumerate(bits[start : start + 64]):
            if bit:
                word |= 1 << offset
        literals.append(word)
    marker = len(literals) << 33  # no running bit, no run length, then the literal count
    words = [marker, *literals]
    return (
        struct.pack(">II", len(bits), len(words))
        + b"".join(struct.pack(">Q", word) for word in words)
        + struct.pack(">I", 0)
    )


def _stat_data(stat: LowerStat | None) -> bytes:
    """git's on-disk stat data: ctime, mtime (seconds, nanoseconds), dev, ino, uid, gid,
    size, each 32 bits, as the mount shows the directory (ctime is its mtime there)."""
    if stat is None:
        return _NO_STAT
    seconds, nanoseconds = divmod(max(stat.mtime_ns, 0), 1_000_000_000)
    return struct.pack(
        ">9I",
        seconds & _U32,
        nanoseconds,
        seconds & _U32,
        nanoseconds,
        0,
        stat.inode & _U32,
        stat.uid & _U32,
        stat.gid & _U32,
        stat.size & _U32,
    )


@dataclass(frozen=True)
class ExcludeFile:
    """``$GIT_DIR/info/exclude`` as git will find it: its stat data and blob id (absent:
    zero stat data and the null id)."""

    stat: bytes
    object_id: bytes

    @classmethod
    def of(cls, path: Path, hash_name: str) -> ExcludeFile:
        null = bytes(hashlib.new(hash_name).digest_size)
        try:
            data = path.read_bytes()
            status = os.stat(path)
        except FileNotFoundError:
            return cls(_NO_STAT, null)
        if data:  # git reads an ignore file with a newline appended, and hashes that
            data += b"\n"
        header = b"blob " + str(len(data)).encode() + b"\0"
        object_id = hashlib.new(hash_name, header + data).digest()
        stat = struct.pack(
            ">9I",
            int(status.st_ctime) & _U32,
            status.st_ctime_ns % 1_000_000_000,
            int(status.st_mtime) & _U32,
            status.st_mtime_ns % 1_000_000_000,
            status.st_dev & _U32,
            status.st_ino & _U32,
            status.st_uid & _U32,
            status.st_gid & _U32,
            status.st_size & _U32,
        )
        return cls(stat, object_id)


def identity(work_tree: Path) -> bytes:
    """What git calls the cache's place (dir.c's ident string), with its NUL."""
    return f"Location {os.path.realpath(work_tree)}, system {os.uname().sysname}".encode() + b"\0"


def untracked_extension(
    root: CachedDirectory, work_tree: Path, info_exclude: ExcludeFile, hash_name: str
) -> IndexExtension:
    """The ``UNTR`` extension for a tree with no untracked file."""
    null = bytes(hashlib.new(hash_name).digest_size)
    ident = identity(work_tree)
    header = (
        encode_varint(len(ident))
        + ident
        + info_exclude.stat
        + _NO_STAT  # core.excludesFile: unknown here, said absent
        + struct.pack(">I", STATUS_DIR_FLAGS)
        + info_exclude.object_id
        + null
        + IGNORE_FILE
        + b"\0"
    )
    directories = list(root.depth_first())
    blocks = b"".join(
        encode_varint(len(directory.untracked))
        + encode_varint(len(directory.children))
        + directory.name
        + b"\0"
        + b"".join(name + b"\0" for name in sorted(directory.untracked))
        for directory in directories
    )
    with_ids = [directory.ignore_file_id is not None for directory in directories]
    data = (
        header
        + encode_varint(len(directories))
        + blocks
        + ewah([True] * len(directories))  # valid
        + ewah([False] * len(directories))  # check-only
        + ewah(with_ids)
        + b"".join(_stat_data(directory.stat) for directory in directories)
        + b"".join(d.ignore_file_id for d in directories if d.ignore_file_id is not None)
        + b"\0"
    )
    return IndexExtension(SIGNATURE, data)
