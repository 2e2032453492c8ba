"""Holding off changes to a workspace for a moment: how a checkpoint of a live mount is of
one instant.

Every operation that may change a workspace (write, create, rename, setattr, a write-open,
...) passes through ``WriteHold.change`` (gated.py does it): it waits while a hold is on,
and is counted while it runs. ``WriteHold.held`` turns the hold on, waits until the changes
already running are done (at most ``DRAIN_SECONDS``: a change stuck on a slow origin must not
stall the caller for ever, ``Busy`` then), and lets its body run with nothing changing: the
overlay's table and every upper file stay as they are until the hold ends. Reads go on.

Changes the kernel keeps to itself are not ours to hold: data a program wrote into a shared
``mmap`` that the kernel has not sent yet is not in the workspace until it does (``msync``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

DRAIN_SECONDS = 30.0
CHANGING = frozenset(
    (
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
        "fsync",
        "release",
    )
)
"""Operations that change a workspace (``open`` too, when it opens for writing). ``fsync``
and ``release`` of a handle that wrote record the file as modified in the table;
``forget`` may drop a row too, but only of a node that was unlinked, which no checkpoint
holds."""


class Busy(Exception):
    """Changes already running did not finish in time."""


def is_change(name: str, args: tuple[object, ...]) -> bool:
    if name in CHANGING:
        return True
    if name == "open" and len(args) >= 2 and isinstance(args[1], int):
        flags = args[1]
        return (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
    return False


class WriteHold:
    def __init__(self) -> None:
        self._held = False
        self._released = trio.Event()
        self._running = 0
        self._idle = trio.Event()
        self._lock = trio.Lock()
        self.changes = 0
        """Changes begun so far (a checkpoint compares it to tell whether anything changed)."""

    @asynccontextmanager
    async def change(self) -> AsyncIterator[None]:
        while self._held:
            await self._released.wait()
        self._running += 1
        self.changes += 1
        try:
            yield
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        async with self._lock:
            self._held = True
            self._released = trio.Event()
            try:
                with trio.move_on_after(DRAIN_SECONDS):
                    while self._running:
                        self._idle = trio.Event()
                        await self._idle.wait()
                if self._running:
                    raise Busy(f"{self._running} change(s) still running after {DRAIN_SECONDS} s")
                yield
            finally:
                self._held = False
                self._released.set()
