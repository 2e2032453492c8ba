"""Access profiles: the paths a job opened, in order (``mount --record-profile FILE``).

A known job (a test suite, a build, a model load) opens much the same files every run. A
mount that records the paths opened through it, once each, in the order they were first
opened, gives a profile that ``artifactfs prefetch NAME --profile FILE`` and ``add-repo
--profile FILE`` replay on another home (or after eviction): the files are fetched in that
order, in a few large batches, as soon as the tree is ready, and the job then runs on a warm
store. Container image loaders do this (stargz, Nydus); no git or model mount did.

The recorder wraps the source's ``Content``: the mount hands it every open as ``reader``
(opens, not reads: a file opened is wanted whole, and a program that opens a file usually
reads it). The path is taken from the snapshot (a few indexed queries, on the loop, once per
file) and kept in memory; a background task appends the new ones to FILE every second and when
the mount stops. The file is plain text, one path per line, relative to the mount's root, so a
person can read and edit it; paths with a newline in them are left out.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import trio

from ..snapshot import ROOT_INODE, Kind, Row, SnapshotIndex
from ..sources import Content
from ..sources.base import BlobReader

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
HEADER = "# artifactfs access profile: paths in the order a job first opened them\n"


class ProfileRecorder:
    """Keeps the order of first opens and appends it to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: set[bytes] = set()
        self._new: list[bytes] = []
        self._started = False

    def opened(self, path: bytes) -> None:
        if path not in self._seen and b"\n" not in path:
            self._seen.add(path)
            self._new.append(path)

    def flush(self) -> None:
        """Blocking: append what is new (the first flush starts the file afresh)."""
        new, self._new = self._new, []
        if not new and self._started:
            return
        mode = "ab" if self._started else "wb"
        with open(self.path, mode) as out:
            if not self._started:
                out.write(HEADER.encode())
            out.write(b"".join(p + b"\n" for p in new))
        self._started = True


class RecordingContent:
    """A ``Content`` that records every file opened through it, then does what ``inner``
    does."""

    def __init__(self, inner: Content, recorder: ProfileRecorder) -> None:
        self._inner = inner
        self._recorder = recorder

    def reader(self, snapshot: SnapshotIndex, row: Row) -> BlobReader:
        try:
            self._recorder.opened(snapshot.path_of(row.inode))
        except Exception:  # a profile must never cost a read
            log.exception("could not record an open for the profile")
        return self._inner.reader(snapshot, row)

    async def fetch(self, snapshot: SnapshotIndex, rows: list[Row]) -> list[Row]:
        return await self._inner.fetch(snapshot, rows)

    async def cached_bytes(self, snapshot: SnapshotIndex, row: Row) -> int:
        return await self._inner.cached_bytes(snapshot, row)

    async def with_size(self, snapshot: SnapshotIndex, row: Row) -> Row:
        return await self._inner.with_size(snapshot, row)

    async def local_path(self, snapshot: SnapshotIndex, row: Row) -> Path:
        """A copy-up reads the file: recorded as an open, as it is one."""
        with contextlib.suppress(Exception):  # a profile must never cost a read
            self._recorder.opened(snapshot.path_of(row.inode))
        return await self._inner.local_path(snapshot, row)

    def listed(self, snapshot: SnapshotIndex, directory: Row) -> None:
        self._inner.listed(snapshot, directory)

    def retired(self, snapshot: SnapshotIndex) -> None:
        self._inner.retired(snapshot)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._inner.run)
            nursery.start_soon(self._keep_writing)

    async def _keep_writing(self) -> None:
        try:
            while True:
                await self._flush()
                await trio.sleep(FLUSH_SECONDS)
        finally:
            with trio.CancelScope(shield=True):
                await self._flush()

    async def _flush(self) -> None:
        try:
            await trio.to_thread.run_sync(self._recorder.flush)
        except OSError as exc:
            log.warning("could not write the access profile %s: %s", self._recorder.path, exc)

    def close(self, reason: str) -> None:
        self._inner.close(reason)


def check_profile_path(text: str) -> Path:
    """Where ``--record-profile`` writes: its directory must exist and be writable. Raises
    ValueError with a line for the user."""
    path = Path(text).absolute()
    if path.is_dir():
        raise ValueError(f"--record-profile: {path} is a directory")
    if not path.parent.is_dir():
        raise ValueError(f"--record-profile: no directory {path.parent}")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"--record-profile: cannot write {path}")
    return path


def read_profile(text: str) -> list[str]:
    """The paths of a profile file, in order, without comments, blanks or repeats. Raises
    ValueError with a line for the user."""
    path = Path(text)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the profile {path}: {exc.strerror}") from None
    paths: list[str] = []
    seen: set[str] = set()
    for line in raw.split(b"\n"):
        if not line.strip() or line.startswith(b"#"):
            continue
        entry = os.fsdecode(line).strip("/")
        if entry in seen:
            continue
        if "\0" in entry or any(part in ("", ".", "..") for part in entry.split("/")):
            raise ValueError(f"the profile {path} names a path that cannot be in a tree: "
                             f"{entry[:80]!r}")  # fmt: skip
        seen.add(entry)
        paths.append(entry)
    return paths


async def find_files(snapshot: SnapshotIndex, paths: list[str]) -> tuple[list[Row], int]:
    """The files (with content) at or below ``paths`` in ``snapshot``, in the order of
    ``paths`` (a directory's files in tree order), each once; and how many paths it does not
    have. Indexed queries, on the loop as a lookup's are, letting other tasks run between
    pages (a large directory is many pages)."""
    found: list[Row] = []
    seen: set[int] = set()
    absent = 0
    for number, given in enumerate(paths):
        if number % 256 == 255:
            await trio.lowlevel.checkpoint()
        row = snapshot.get(ROOT_INODE)
        for part in given.split("/"):
            if not part:
                continue
            if row is None or part in (".", "..") or not row.kind.is_directory:
                row = None
                break
            row = snapshot.lookup(row.inode, os.fsencode(part))
        if row is None:
            absent += 1
            continue
        stack = [row]
        while stack:
            entry = stack.pop()
            if entry.kind.is_directory:
                children: list[Row] = []
                after = 0
                while page := snapshot.children(entry, after):
                    children.extend(page)
                    after = page[-1].inode
                    await trio.lowlevel.checkpoint()
                stack.extend(reversed(children))
            elif entry.kind.has_blob and entry.kind is not Kind.SYMLINK and entry.inode not in seen:
                seen.add(entry.inode)
                found.append(entry)
    return found, absent
