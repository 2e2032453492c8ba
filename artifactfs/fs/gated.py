"""The kernel-facing layer: the ready gate in front of every user-facing operation, and the
guarantee that a handler raises nothing but ``FUSEError``.

User-facing operations wait on the gate; kernel lifecycle operations (init, forget, release,
releasedir, fsync, statfs) pass straight through, and so do ``getattr``, ``getxattr``
and ``listxattr`` of the root inode, so that ``stat``/``mountpoint`` never hang and the
``user.artifactfs.state``/``.error`` attributes can be read while preparing or failed.

In a writable mount, every operation that changes the workspace also passes through its
``WriteHold`` (hold.py), so a checkpoint can hold changes off for a moment.

It is also where domain errors become errno, and only here: a ``ReadError`` from a source
(the bytes could not be had, or were not what the snapshot says) is logged as one line and
answered with its errno (``ERRNO_OF``); a workspace's ``overlay.store.Refused`` (rename over a
non-empty directory, ...) is answered with its errno, silently; an ``OSError`` of a local file
with its errno (logged with its traceback unless it is ENOSPC or EDQUOT). Any other exception
escaping an operation would kill the mount (pyfuse3's rule), so it is a bug: logged with its
traceback and answered with EIO.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3

from ..errors import NoSpace, ReadError
from ..overlay.store import Refused
from .gate import ReadyGate
from .hold import WriteHold, is_change

log = logging.getLogger(__name__)

ERRNO_OF: dict[type[ReadError], int] = {ReadError: errno.EIO, NoSpace: errno.ENOSPC}
"""The errno each kind of read failure is answered with (the most specific class wins)."""

_GATED = (
    "lookup",
    "opendir",
    "readdir",
    "open",
    "read",
    "readlink",
    "access",
    "create",
    "write",
    "mkdir",
    "mknod",
    "symlink",
    "link",
    "unlink",
    "rmdir",
    "rename",
    "setattr",
    "setxattr",
    "removexattr",
)
_GATED_EXCEPT_ROOT = ("getattr", "getxattr", "listxattr")
_PASSTHROUGH = ("release", "releasedir", "fsync", "fsyncdir", "statfs")
# No ``flush``: pyfuse3's own answers ENOSYS, after which the kernel sends none, and a close
# is one round trip cheaper (a workspace records a written file at ``release``).


async def _guarded(name: str, call: Awaitable[Any]) -> Any:
    try:
        return await call
    except pyfuse3.FUSEError:
        raise
    except Refused as exc:  # what the file system's semantics answer (ENOTEMPTY, EXDEV, ...)
        raise pyfuse3.FUSEError(exc.errno) from None
    except ReadError as exc:
        log.error("%s: %s", name, exc)
        raise pyfuse3.FUSEError(errno_of(exc)) from None
    except OSError as exc:  # a local file failed (a workspace's upper file, its database)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise pyfuse3.FUSEError(exc.errno) from None
        log.exception("unexpected error in %s", name)
        raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
    except Exception:
        log.exception("unexpected error in %s", name)
        raise pyfuse3.FUSEError(errno.EIO) from None


def errno_of(error: ReadError) -> int:
    for kind in type(error).__mro__:
        if kind in ERRNO_OF:
            return ERRNO_OF[kind]
    return errno.EIO


def _gated(name: str) -> Callable[..., Awaitable[Any]]:
    async def operation(self: GatedOperations, *args: Any) -> Any:
        await self.gate.wait()
        if self.hold is not None and is_change(name, args):
            async with self.hold.change():
                return await _guarded(name, getattr(self.inner, name)(*args))
        return await _guarded(name, getattr(self.inner, name)(*args))

    operation.__name__ = name
    return operation


def _gated_except_root(name: str) -> Callable[..., Awaitable[Any]]:
    async def operation(self: GatedOperations, inode: int, *args: Any) -> Any:
        if inode != pyfuse3.ROOT_INODE:
            await self.gate.wait()
        return await _guarded(name, getattr(self.inner, name)(inode, *args))

    operation.__name__ = name
    return operation


def _passthrough(name: str) -> Callable[..., Awaitable[Any]]:
    async def operation(self: GatedOperations, *args: Any) -> Any:
        if self.hold is not None and is_change(name, args):  # a release records the writes
            async with self.hold.change():
                return await _guarded(name, getattr(self.inner, name)(*args))
        return await _guarded(name, getattr(self.inner, name)(*args))

    operation.__name__ = name
    return operation


class GatedOperations(pyfuse3.Operations):
    """Wraps an operations object that never needs to know the gate exists."""

    def __init__(
        self, inner: pyfuse3.Operations, gate: ReadyGate, hold: WriteHold | None = None
    ) -> None:
        super().__init__()
        self.inner = inner
        self.gate = gate
        self.hold = hold
        """A writable mount's: changes wait while a checkpoint holds them off (hold.py)."""

    def init(self) -> None:
        self.inner.init()

    async def forget(self, inode_list: Any) -> None:
        try:
            await self.inner.forget(inode_list)
        except Exception:  # forget must not raise at all, not even FUSEError
            log.exception("unexpected error in forget")


for _name in _GATED:
    setattr(GatedOperations, _name, _gated(_name))
for _name in _GATED_EXCEPT_ROOT:
    setattr(GatedOperations, _name, _gated_except_root(_name))
for _name in _PASSTHROUGH:
    setattr(GatedOperations, _name, _passthrough(_name))
