"""What one snapshot entry is, and which entries from a remote tree are acceptable.

Tree entries come from servers we do not control. A name that could escape its directory or
confuse the kernel or git (``.``, ``..``, ``/``, NUL, empty, longer than NAME_MAX, or ``.git``
in any case, which would let a tree plant a git directory under the user's ``git`` commands)
is refused, and so is a symlink target that is empty, contains NUL or exceeds PATH_MAX.
"""

from __future__ import annotations

import enum
import stat
from dataclasses import dataclass

NAME_MAX = 255
SYMLINK_TARGET_MAX = 4095

GIT_MODE_TREE = 0o040000
GIT_MODE_SYMLINK = 0o120000
GIT_MODE_GITLINK = 0o160000


class Kind(enum.IntEnum):
    """The kinds of entries a snapshot can hold, stored as integers in the index."""

    DIRECTORY = 1
    FILE = 2
    EXECUTABLE = 3
    SYMLINK = 4
    SUBMODULE = 5
    """A gitlink: shown as an empty directory."""
    FIFO = 6
    """Never in a snapshot: a workspace's named pipe (a table node, no content)."""
    SOCKET = 7
    """Never in a snapshot: a workspace's socket (a table node, no content)."""

    @property
    def is_directory(self) -> bool:
        return self in (Kind.DIRECTORY, Kind.SUBMODULE)

    @property
    def has_blob(self) -> bool:
        return self in (Kind.FILE, Kind.EXECUTABLE, Kind.SYMLINK)

    @property
    def st_mode(self) -> int:
        return _ST_MODES[self]


_ST_MODES = {
    Kind.DIRECTORY: stat.S_IFDIR | 0o755,
    Kind.SUBMODULE: stat.S_IFDIR | 0o755,
    Kind.FILE: stat.S_IFREG | 0o644,
    Kind.EXECUTABLE: stat.S_IFREG | 0o755,
    Kind.SYMLINK: stat.S_IFLNK | 0o777,
    Kind.FIFO: stat.S_IFIFO | 0o644,
    Kind.SOCKET: stat.S_IFSOCK | 0o755,
}


class RefusedEntry(ValueError):
    """A remote entry we will not show; the message says why, for the log."""


def kind_of_git_mode(mode: int) -> Kind:
    """Map a git tree mode to a kind, as git itself reads modes (old 0664 files included)."""
    if mode == GIT_MODE_TREE:
        return Kind.DIRECTORY
    if mode == GIT_MODE_SYMLINK:
        return Kind.SYMLINK
    if mode == GIT_MODE_GITLINK:
        return Kind.SUBMODULE
    if mode & 0o170000 == stat.S_IFREG:
        return Kind.EXECUTABLE if mode & 0o111 else Kind.FILE
    raise RefusedEntry(f"unknown mode {mode:o}")


def check_name(name: bytes) -> None:
    """Raise ``RefusedEntry`` unless ``name`` is safe as one path component."""
    if name in (b"", b".", b".."):
        raise RefusedEntry(f"forbidden name {name!r}")
    if b"/" in name or b"\0" in name:
        raise RefusedEntry(f"name contains '/' or NUL: {name[:80]!r}")
    if len(name) > NAME_MAX:
        raise RefusedEntry(f"name longer than {NAME_MAX} bytes: {name[:80]!r}...")
    if name.lower() == b".git":
        raise RefusedEntry(f"a tree entry named {name!r} would pose as a git directory")


def printable(path: bytes) -> str:
    """A path from a remote tree, made safe and short enough for one log line."""
    return path.decode("utf-8", "backslashreplace")[:300]


def check_symlink_target(target: bytes) -> None:
    """Raise ``RefusedEntry`` unless ``target`` is a plausible symlink target."""
    if not target:
        raise RefusedEntry("empty symlink target")
    if len(target) > SYMLINK_TARGET_MAX:
        raise RefusedEntry(f"symlink target of {len(target)} bytes (limit {SYMLINK_TARGET_MAX})")
    if b"\0" in target:
        raise RefusedEntry("symlink target contains NUL")


@dataclass(frozen=True)
class NewEntry:
    """One validated child entry, as a source hands it to the snapshot writer."""

    name: bytes
    kind: Kind
    oid: str | None
    """Hex object id: the blob for files and symlinks, the tree or commit otherwise."""
    size: int | None = None
    """Content size in bytes; None while unknown."""
    target: bytes | None = None
    """Symlink target, for symlinks only."""
    sha256: str | None = None
    """Plain sha256 of the content when the origin vouches for one (Hub LFS files)."""
