"""The snapshots a mount has shown: the current one, and older ones the kernel still knows.

A refresh moves a mount to a new commit without unmounting it. Each snapshot a mount installs
is a *generation* with its own range of kernel inode numbers (row id + generation * 2**40;
inode 1 is always the root of the current generation), so inode numbers are never reused and
an inode keeps meaning the same entry of the same commit for as long as the kernel holds it.
Lookups from the root see the newest generation; a directory of an older generation (a shell
whose working directory it is) keeps listing its own commit, and an open directory handle,
the root's included, keeps listing the generation it was opened in: nothing is served half
old, half new. An old generation is retired, its index closed, when the kernel has forgotten
every inode of it (exact lookup counts make that knowable) and no handle of it is open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..snapshot import ROOT_INODE, SnapshotIndex

log = logging.getLogger(__name__)

STRIDE = 1 << 40
"""Room for 10¹² entries per generation, and 2²³ generations within 63 bits."""


@dataclass
class Generation:
    number: int
    index: SnapshotIndex
    lookups: int = 0
    """Lookup references the kernel holds on inodes of this generation."""
    handles: int = 0
    """Open files and directories of this generation."""

    def kernel_inode(self, row_inode: int) -> int:
        return ROOT_INODE if row_inode == ROOT_INODE else row_inode + self.number * STRIDE


class Generations:
    def __init__(self, on_retire: Callable[[SnapshotIndex], None] = lambda index: None) -> None:
        """``on_retire`` is told of each index just before it is closed."""
        self._all: dict[int, Generation] = {}
        self._on_retire = on_retire
        self.current: Generation | None = None

    def install(self, index: SnapshotIndex) -> Generation | None:
        """Make ``index`` the current generation; return the one it replaces, if any."""
        previous = self.current
        number = previous.number + 1 if previous is not None else 0
        self.current = self._all[number] = Generation(number, index)
        if previous is not None:
            self.retire_if_unused(previous)
        for older in self._all.values():
            if older is not self.current:  # their descriptors, until someone reads them
                older.index.release()
        return previous

    def resolve(self, kernel_inode: int) -> tuple[Generation, int] | None:
        """The generation and row id a kernel inode stands for, or None if unknown."""
        if kernel_inode == ROOT_INODE:
            return (self.current, ROOT_INODE) if self.current is not None else None
        generation = self._all.get(kernel_inode // STRIDE)
        if generation is None:
            return None
        return generation, kernel_inode % STRIDE

    def forgotten(self, kernel_inode: int, count: int) -> None:
        if kernel_inode == ROOT_INODE:
            return
        generation = self._all.get(kernel_inode // STRIDE)
        if generation is not None:
            generation.lookups -= count
            self.retire_if_unused(generation)

    def opened(self, generation: Generation) -> None:
        generation.handles += 1

    def closed(self, generation: Generation) -> None:
        generation.handles -= 1
        self.retire_if_unused(generation)

    def retire_if_unused(self, generation: Generation) -> None:
        if generation is self.current or generation.lookups > 0 or generation.handles > 0:
            return
        if self._all.pop(generation.number, None) is not None:
            log.info("retired the snapshot of %s", generation.index.meta.commit)
            self._on_retire(generation.index)
            generation.index.close()

    def close(self) -> None:
        for generation in self._all.values():
            generation.index.close()
        self._all.clear()
        self.current = None

    def live(self) -> int:
        return len(self._all)

    def showing(self, index: SnapshotIndex) -> list[Generation]:
        """The live generations that show ``index``."""
        return [generation for generation in self._all.values() if generation.index is index]
