"""Partial blobs: content fetched by range, kept across restarts until it is whole.

A large file on the Hub is fetched in the ranges that are read, not at once. Its bytes go into
``<cas>/partial/<algorithm>/<2 hex>/<hex>`` (a sparse file of the final size) and which
256 KiB blocks are present into ``<hex>.blocks`` beside it. Because both are keyed by the
content digest, not by commit or path, a download survives restarts, and an upstream commit
that keeps the file (same sha256) continues the same partial.

Durability: a block counts as present only once the map says so, and the map is written (to a
temporary file, fsynced, renamed) only after the data it describes was fdatasynced. A crash
loses at most the blocks fetched since the last flush; it never makes the map claim bytes that
are not on disk. When every block is present the whole content is hashed; only if it matches
its digest is it moved into the CAS (``ContentStore.adopt``). Otherwise the partial is thrown
away.

One process writes a partial at a time (an ``flock`` on the data file); a second process that
wants the same blob at the same moment works on a private, unpersisted copy instead.

Blocking API: call it from worker threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from collections.abc import Sequence
from pathlib import Path

from .digests import Digest

BLOCK = 256 * 1024
_MAGIC = b"AFPB"
_HEADER = struct.Struct("<4sIQ")  # magic, block size, content size


def blocks_in(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK


class PartialBlob:
    """One partial download. Not thread-safe: its owner serialises calls."""

    def __init__(self, data_path: Path, size: int, fd: int, present: bytearray) -> None:
        self.data_path = data_path
        self.map_path = data_path.with_name(data_path.name + ".blocks")
        self.size = size
        self._fd = fd
        self._present = present
        self._dirty = False
        self.persistent = True

    @classmethod
    def open(cls, root: Path, digest: Digest, size: int) -> PartialBlob:
        """Open (or start) the partial of ``digest``, of ``size`` bytes."""
        directory = root / "partial" / digest.algorithm.name / digest.hex[:2]
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / digest.hex
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return cls._private(root, digest, size)
            # evicted between our open and our lock (cas/eviction.py): the map we would read
            # next is the next partial's, not this file's; start on the path's file instead
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            os.close(fd)
        try:
            present = _read_map(path.with_name(path.name + ".blocks"), size)
            if present is None:  # new, or a map we cannot trust: start over
                present = bytearray(blocks_in(size))
                os.ftruncate(fd, 0)
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, size, fd, present)

    @classmethod
    def _private(cls, root: Path, digest: Digest, size: int) -> PartialBlob:
        """Another process is filling the shared partial: fill our own, unpersisted one."""
        directory = root / "partial" / "private"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{digest.hex}-{os.getpid()}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # ours alone (pid in its name): says "in use" to gc
        os.ftruncate(fd, size)
        blob = cls(path, size, fd, bytearray(blocks_in(size)))
        blob.persistent = False
        return blob

    # -- what is there --------------------------------------------------------------------

    def has(self, block: int) -> bool:
        return bool(self._present[block])

    def missing(self, first: int, last: int) -> list[int]:
        return [b for b in range(first, last + 1) if not self._present[b]]

    @property
    def complete(self) -> bool:
        return all(self._present)

    def present_bytes(self) -> int:
        return _bytes_present(self._present, self.size)

    @staticmethod
    def bytes_on_disk(root: Path, digest: Digest, size: int) -> int:
        """What the saved map of a partial says is present, without opening it for writing
        (0 if there is none or it cannot be trusted)."""
        path = root / "partial" / digest.algorithm.name / digest.hex[:2] / f"{digest.hex}.blocks"
        present = _read_map(path, size)
        return 0 if present is None else _bytes_present(present, size)

    # -- filling ------------------------------------------------------------------------------

    def write(self, offset: int, data: bytes | Sequence[bytes | memoryview]) -> None:
        """Store bytes fetched at ``offset`` (one buffer, or several written as one with
        ``pwritev``); whole blocks they complete become present (at the next ``flush`` for
        the map on disk, at once for readers)."""
        pieces: list[bytes | memoryview] = [data] if isinstance(data, bytes) else list(data)
        length = sum(len(piece) for piece in pieces)
        if offset < 0 or offset + length > self.size:
            raise ValueError(f"write of {length} bytes at {offset} beyond {self.size}")
        position = offset
        while pieces:
            written = os.pwritev(self._fd, pieces, position)
            if written == 0 and any(pieces):
                raise OSError(f"no progress writing {self.data_path}")
            position += written
            while pieces and written >= len(pieces[0]):  # a short write: go on with the rest
                written -= len(pieces[0])
                pieces.pop(0)
            if pieces and written:
                pieces[0] = memoryview(pieces[0])[written:]
        end = offset + length
        first = -(-offset // BLOCK)  # the blocks wholly inside [offset, end)
        stop = blocks_in(self.size) if end == self.size else end // BLOCK
        for block in range(first, stop):
            self._present[block] = 1
            self._dirty = True

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def flush(self) -> None:
        """Make the map on disk say what is durably present."""
        if not self._dirty or not self.persistent or self._fd < 0:
            return
        os.fdatasync(self._fd)
        temp = self.map_path.with_name(self.map_path.name + f".tmp-{os.getpid()}")
        with open(temp, "wb") as out:
            out.write(_HEADER.pack(_MAGIC, BLOCK, self.size) + bytes(self._present))
            out.flush()
            os.fsync(out.fileno())
        os.rename(temp, self.map_path)
        self._dirty = False

    def discard(self) -> None:
        """Throw everything away (the content did not match its digest)."""
        self.close()
        for path in (self.data_path, self.map_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self.flush()
            os.close(self._fd)
            self._fd = -1

    @property
    def closed(self) -> bool:
        """Handed to the CAS (``detach_file``) or closed: it takes no more writes."""
        return self._fd < 0

    def detach_file(self) -> Path:
        """Hand the complete data file over (to be verified and adopted by the CAS)."""
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            self.map_path.unlink()
        return self.data_path


def _bytes_present(present: bytearray, size: int) -> int:
    count = sum(present)
    if count and present[-1] and size % BLOCK:
        return (count - 1) * BLOCK + size % BLOCK
    return count * BLOCK


def _read_map(path: Path, size: int) -> bytearray | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(raw) != _HEADER.size + blocks_in(size):
        return None
    magic, block, recorded = _HEADER.unpack_from(raw)
    if magic != _MAGIC or block != BLOCK or recorded != size:
        return None
    return bytearray(raw[_HEADER.size :])
