"""Which blobs to fetch before anyone reads them: guesses from what programs have done so far.

A program that walks a tree (``grep -r``, a build, an indexer) lists a directory, reads its
files, then goes down into its subdirectories in the order they were listed. Fetching one blob
per read would cost it a round trip per file, and one pack per directory still costs a round
trip (and a server-side pack) per directory. So:

- the first read in a directory that misses the CAS also asks for that directory's other small
  files (a program that reads one file of a directory often reads its neighbours);
- when that directory and its parent have both been listed, a program is walking the tree: from
  the highest directory of that chain of listed ones (where the walk started), the small files
  of every directory the walk will visit next, in the order it visits them, are asked for in
  *chunks*. The first chunk is small and each next one twice as large, up to a ceiling, so a
  short walk costs little and a long one gets packs large enough to be cheap per blob. A new
  chunk is asked for whenever the walker reads in one of the two newest chunks, so the fetch
  stays ahead of it.

Only files up to ``MAX_FILE`` bytes are guessed (a big file is read by whoever wants it), and a
guess never delays or fails a reader (``fetcher.BlobFetcher.prefetch``). Listing alone (``ls
-R``, ``find``) fetches nothing: a walk is only followed once it reads a file that is missing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from ...snapshot import ROOT_INODE, Row, SnapshotIndex
from ...snapshot.entries import Kind

MAX_FILE = 256 * 1024
"""Only files up to this size are fetched ahead of need."""
MAX_FILES_PER_DIRECTORY = 512
"""Only a directory's first this many entries are looked at."""
FIRST_CHUNK_FILES = 256
CHUNK_FILES_CEILING = 4096
CHUNK_BYTES_CEILING = 64 << 20
"""A chunk of a walk ends after the directory that takes it past either ceiling."""
CHUNK_ROWS_CEILING = 4096
"""A chunk also ends after looking at this many entries, small files or not: the choice is
made on the trio loop, and a tree of few small files must not be read whole at once."""
CHUNKS_AHEAD = 2
"""Reading in one of this many newest chunks of a walk asks for the next one."""
PAGE = 1000


@dataclass
class _Walk:
    order: Iterator[Row]
    """The directories the walker will visit, in order, that nobody has guessed for yet."""
    chunk_files: int
    """Files the next chunk asks for (at least)."""
    chunks: int = 0
    """How many chunks were asked for; chunk numbers count from 1."""
    done: bool = False
    partly: tuple[Row, int] | None = None
    """The directory the last chunk stopped in, and the last of its entries it looked at."""


@dataclass
class _Chunk:
    files: int
    wanted: dict[str, int] = field(default_factory=dict)
    size: int = 0
    rows: int = 0

    @property
    def full(self) -> bool:
        return (
            len(self.wanted) >= self.files
            or self.size >= CHUNK_BYTES_CEILING
            or self.rows >= CHUNK_ROWS_CEILING
        )


@dataclass
class _Guessed:
    walk: _Walk | None
    chunk: int


@dataclass
class FetchAhead:
    """The guesses for one snapshot. ``reading`` is told of every file a program opens for
    reading and returns the blobs to fetch ahead of need (id -> size), often none."""

    index: SnapshotIndex
    listed: set[int]
    """Directories (row inodes) a program has listed: kept up to date by the operations."""
    _guessed: dict[int, _Guessed] = field(default_factory=dict)
    """Directories whose small files were asked for, and in which chunk of which walk."""
    _walks: dict[int, _Walk] = field(default_factory=dict)
    """Walks by the directory they started from."""

    def reading(self, row: Row, missing: bool) -> dict[str, int]:
        guessed = self._guessed.get(row.parent)
        if guessed is not None:
            walk = guessed.walk
            if walk is not None and not walk.done and guessed.chunk > walk.chunks - CHUNKS_AHEAD:
                return self._next_chunk(walk)
            return {}
        if not missing:
            return {}
        directory = self.index.get(row.parent)
        if directory is None:
            return {}
        top = self._walk_start(directory)
        if top is None:
            wanted = self._small_files(directory)
            self._guessed[directory.inode] = _Guessed(None, 0)
            return wanted
        # from here on: where this walker is, whatever an earlier one from ``top`` reached
        order = (d for d in _walk_order(self.index, directory, top) if d.inode not in self._guessed)
        walk = self._walks.get(top.inode)
        if walk is None:
            walk = self._walks[top.inode] = _Walk(order, FIRST_CHUNK_FILES)
        else:
            walk.order, walk.done, walk.partly = order, False, None
        return self._next_chunk(walk)

    def _walk_start(self, directory: Row) -> Row | None:
        """The highest directory of the unbroken chain of listed ones that ends at
        ``directory``, if the chain has at least two: a walk started there."""
        if directory.inode not in self.listed or directory.inode == ROOT_INODE:
            return None
        start = directory
        while start.inode != ROOT_INODE and start.parent in self.listed:
            parent = self.index.get(start.parent)
            if parent is None:
                break
            start = parent
        return start if start.inode != directory.inode else None

    def _next_chunk(self, walk: _Walk) -> dict[str, int]:
        walk.chunks += 1
        chunk = _Chunk(walk.chunk_files)
        started, walk.partly = walk.partly, None
        resumed = [started] if started is not None else []
        for directory, after in itertools.chain(resumed, ((d, 0) for d in walk.order)):
            self._guessed[directory.inode] = _Guessed(walk, walk.chunks)
            chunk.rows += 1  # empty directories, too, cost a look
            stopped = self._take(directory, after, chunk)
            if stopped is not None:  # full before the directory's end: the next chunk goes on
                walk.partly = (directory, stopped)
                break
            if chunk.full:
                break
        else:
            walk.done = True
        walk.chunk_files = min(walk.chunk_files * 2, CHUNK_FILES_CEILING)
        return chunk.wanted

    def _take(self, directory: Row, after: int, chunk: _Chunk) -> int | None:
        """Add ``directory``'s small files after entry ``after`` to ``chunk`` until it is
        full; the last entry looked at if some are left, else None."""
        last = directory.first_child + directory.child_count - 1
        while after < last:
            entries = self.index.children(directory, after_inode=after, limit=PAGE)
            if not entries:
                return None
            for entry in entries:
                chunk.rows += 1
                after = entry.inode
                if (small := _small_file(entry)) is not None:
                    chunk.wanted[small[0]] = small[1]
                    chunk.size += small[1]
                if chunk.full:
                    return after if after < last else None
        return None

    def _small_files(self, directory: Row) -> dict[str, int]:
        entries = self.index.children(directory, limit=MAX_FILES_PER_DIRECTORY)
        return dict(small for entry in entries if (small := _small_file(entry)) is not None)


def _small_file(entry: Row) -> tuple[str, int] | None:
    """(id, size) of a file small enough to be fetched ahead of need, else None."""
    if entry.kind not in (Kind.FILE, Kind.EXECUTABLE) or not entry.oid or entry.size is None:
        return None
    return (entry.oid, entry.size) if 0 < entry.size <= MAX_FILE else None


def _walk_order(index: SnapshotIndex, start: Row, top: Row) -> Iterator[Row]:
    """The directories a depth-first walk of ``top`` reads files in from ``start`` on:
    ``start``'s own subtree, then its parent (whose files listed after ``start`` are still to
    be read) and the parent's later subdirectories, and so on up to ``top``. Children come in
    tree order, the order they are listed in."""
    pending: list[tuple[Row, bool]] = []  # a stack, next last: (directory, with its subtree)
    levels: list[tuple[Row, list[Row]]] = []
    node = start
    while node.inode != top.inode and node.inode != ROOT_INODE:
        parent = index.get(node.parent)
        if parent is None:
            break
        levels.append((parent, _subdirectories(index, parent, after=node.inode)))
        node = parent
    for parent, later in reversed(levels):
        pending.extend((directory, True) for directory in reversed(later))
        pending.append((parent, False))
    pending.append((start, True))
    while pending:
        directory, whole = pending.pop()
        yield directory
        if whole:
            pending.extend((child, True) for child in reversed(_subdirectories(index, directory)))


def _subdirectories(index: SnapshotIndex, directory: Row, after: int = 0) -> list[Row]:
    found: list[Row] = []
    while directory.subdirs:
        children = index.children(directory, after_inode=after, limit=1000)
        if not children:
            return found
        found.extend(child for child in children if child.kind is Kind.DIRECTORY)
        after = children[-1].inode
    return found
