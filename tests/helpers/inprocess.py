"""A mount without a kernel: the real operations, gate, content and source, driven in-process.

Why: a read's whole path (gate → operations → content → fetcher → origin → CAS) should be
testable in milliseconds, with exact errnos and counts, without a FUSE mount per test (as
s3ql's ``t3_fs_api.py`` drives its operations). ``in_process`` wires the parts the way
``mount/worker.py`` does: the source's content is opened with the operations as its host and
run in a nursery, prepare runs in a thread, its snapshot is installed and the gate opened.

Only the kernel is stood in for: its caches (``RecordingKernel`` records what it is told to
forget) and the readdir token (``pyfuse3.readdir_reply`` needs a real one, so it is replaced
by a collector while the harness runs). Every request goes through ``GatedOperations``, so
what a test sees is what the kernel would: attributes, bytes, or ``FUSEError`` with an errno.

The harness holds lookup references like the kernel does (every entry ``lookup`` or
``readdir`` returned) and gives them back with ``forget_all``. Leaving it closes the content
(failing what waits, stopping fetch children), waits for every thread job to return, cancels the
background work, and checks that no child process is left.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import trio
import trio.testing

from artifactfs.errors import SourceError
from artifactfs.fs.gated import GatedOperations
from artifactfs.fs.operations import SnapshotOperations
from artifactfs.fs.state import MountState
from artifactfs.snapshot import ROOT_INODE, SnapshotIndex
from artifactfs.sources import Content, PreparedSnapshot, Source
from artifactfs.sources.counters import FetchCounters

CTX: Any = None
"""The request context: no operation here looks at it."""
READ_SIZE = 128 * 1024
"""The kernel's default FUSE read size."""
IDLE_DEADLINE = 10.0


class RecordingKernel:
    """Stands in for the kernel's caches: records what the operations tell it to forget."""

    def __init__(self) -> None:
        self.forgotten_entries: list[tuple[int, bytes]] = []
        self.forgotten_inodes: list[int] = []

    async def forget_entries(self, parent: int, names: Any) -> None:
        self.forgotten_entries += [(parent, name) for name in names]

    async def forget_inode(self, inode: int) -> None:
        self.forgotten_inodes.append(inode)


@dataclass
class DirEntry:
    name: bytes
    attrs: pyfuse3.EntryAttributes
    offset: int


@dataclass
class Listing:
    """The readdir token's stand-in: collects entries, accepts at most ``limit`` of them
    (``readdir_reply`` returns False when the kernel's buffer is full)."""

    limit: int | None = None
    entries: list[DirEntry] = field(default_factory=list)

    def reply(self, name: bytes, attrs: pyfuse3.EntryAttributes, offset: int) -> bool:
        if self.limit is not None and len(self.entries) >= self.limit:
            return False
        self.entries.append(DirEntry(name, attrs, offset))
        return True


def _readdir_reply(token: Listing, name: bytes, attrs: pyfuse3.EntryAttributes, off: int) -> bool:
    return token.reply(name, attrs, off)


@contextmanager
def collecting_readdir() -> Iterator[None]:
    """Make ``pyfuse3.readdir_reply`` (looked up at each call by the operations) take a
    ``Listing`` as its token, and put the real one back afterwards."""
    real = pyfuse3.readdir_reply
    pyfuse3.readdir_reply = _readdir_reply  # type: ignore[assignment]
    try:
        yield
    finally:
        pyfuse3.readdir_reply = real


class Harness:
    """One in-process mount. Every method is a request as the kernel would send it."""

    content: Content
    """The content the operations read through (set by ``in_process``)."""

    def __init__(self, source: Source, counters: FetchCounters) -> None:
        self.source = source
        self.counters = counters
        self.kernel = RecordingKernel()
        self.state = MountState(source.display, None, counters=counters)
        self.snapshots = SnapshotOperations(self.state, kernel=self.kernel)
        self.operations = GatedOperations(self.snapshots, self.state.gate)
        self.held: Counter[int] = Counter()
        """Lookup references the kernel would hold now, by inode."""

    # -- prepare --------------------------------------------------------------------------------

    async def prepare(self) -> PreparedSnapshot | None:
        """What the worker's prepare task does: prepare in a thread, install, open the gate;
        or fail the gate with the reason (None is returned then)."""
        try:
            prepared = await trio.to_thread.run_sync(self.source.prepare)
        except SourceError as exc:
            self.state.gate.fail(str(exc))
            return None
        await self.install(prepared)
        self.state.gate.open()
        return prepared

    async def install(self, prepared: PreparedSnapshot) -> None:
        """Show ``prepared`` (the first snapshot, or a refresh)."""
        snapshot = await trio.to_thread.run_sync(SnapshotIndex, prepared.path)
        await self.snapshots.install(snapshot)

    # -- names ----------------------------------------------------------------------------------

    async def lookup(self, parent: int, name: bytes) -> pyfuse3.EntryAttributes:
        attrs = await self.operations.lookup(parent, name, CTX)
        if attrs.st_ino:
            self.held[attrs.st_ino] += 1
        return attrs

    async def lookup_path(self, path: str) -> pyfuse3.EntryAttributes:
        """Look up each component from the root, as the kernel resolves a path (a missing
        component raises ENOENT)."""
        attrs = await self.getattr(ROOT_INODE)
        for name in _components(path):
            attrs = await self.lookup(attrs.st_ino, name)
            if not attrs.st_ino:
                raise pyfuse3.FUSEError(2)  # ENOENT, from a negative entry
        return attrs

    async def getattr(self, inode: int) -> pyfuse3.EntryAttributes:
        return await self.operations.getattr(inode, CTX)

    async def forget(self, inode: int, count: int = 1) -> None:
        await self.operations.forget([(inode, count)])
        self.held[inode] -= count
        if self.held[inode] <= 0:
            del self.held[inode]

    async def forget_all(self) -> None:
        """Give back every lookup reference held, as the kernel does when it evicts."""
        held, self.held = self.held, Counter()
        await self.operations.forget(list(held.items()))

    # -- directories ----------------------------------------------------------------------------

    async def listdir(self, path: str, page: int | None = None) -> list[DirEntry]:
        """Every entry of ``path`` (``.`` and ``..`` included), read ``page`` entries per
        readdir call when given (the kernel resumes from the last offset it accepted)."""
        inode = (await self.lookup_path(path)).st_ino
        fh = await self.operations.opendir(inode, CTX)
        entries: list[DirEntry] = []
        try:
            while True:
                listing = Listing(page)
                start = entries[-1].offset if entries else 0
                await self.operations.readdir(fh, start, listing)  # type: ignore[arg-type]
                for entry in listing.entries:
                    if entry.name not in (b".", b".."):
                        self.held[entry.attrs.st_ino] += 1
                entries += listing.entries
                if not listing.entries or page is None:
                    return entries
        finally:
            await self.operations.releasedir(fh)

    async def names(self, path: str) -> list[bytes]:
        return [entry.name for entry in await self.listdir(path)]

    async def readlink(self, path: str) -> bytes:
        return await self.operations.readlink((await self.lookup_path(path)).st_ino, CTX)

    # -- files ----------------------------------------------------------------------------------

    async def open(self, path: str, flags: int = os.O_RDONLY) -> int:
        inode = (await self.lookup_path(path)).st_ino
        return (await self.operations.open(inode, flags, CTX)).fh

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        return bytes(await self.operations.read(fh, offset, size))

    async def read_handle(self, fh: int, size: int = READ_SIZE) -> bytes:
        """Read an open file from its start in ``size`` chunks until a read returns nothing."""
        parts: list[bytes] = []
        offset = 0
        while chunk := await self.read(fh, offset, size):
            parts.append(chunk)
            offset += len(chunk)
        return b"".join(parts)

    async def release(self, fh: int) -> None:
        await self.operations.release(fh)

    async def read_file(self, path: str, size: int = READ_SIZE) -> bytes:
        """Open, read in chunks until EOF, release: what ``cat`` makes the kernel do."""
        fh = await self.open(path)
        try:
            return await self.read_handle(fh, size)
        finally:
            await self.release(fh)

    # -- extended attributes --------------------------------------------------------------------

    async def getxattr(self, path: str, name: str) -> bytes:
        inode = (await self.lookup_path(path)).st_ino if path else ROOT_INODE
        return bytes(await self.operations.getxattr(inode, name.encode(), CTX))


async def until(condition: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    """Wait, inside trio, for ``condition`` to hold; fail after ``seconds``."""
    deadline = trio.current_time() + seconds
    while not condition():
        if trio.current_time() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await trio.sleep(0.005)


def _components(path: str) -> list[bytes]:
    return [part.encode() for part in path.split("/") if part]


@asynccontextmanager
async def in_process(
    source: Source, counters: FetchCounters, *, prepare: bool = True
) -> AsyncIterator[Harness]:
    """Run ``source`` as a mount would, inside the current ``trio.run``; prepared and ready
    unless ``prepare`` is False (then call ``Harness.prepare`` when the test wants)."""
    children_before = set(children_of(os.getpid()))
    harness = Harness(source, counters)
    content = harness.content = source.open_content(harness.snapshots)
    harness.snapshots.read_through(content)
    with collecting_readdir():
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(content.run)
                try:
                    if prepare:
                        await harness.prepare()
                    yield harness
                finally:
                    content.close("the test is over")
                    await _wait_idle()
                    nursery.cancel_scope.cancel()
        finally:
            harness.snapshots.close()
    left = set(children_of(os.getpid())) - children_before
    assert not left, f"child processes left behind: {[_describe(pid) for pid in sorted(left)]}"


async def _wait_idle() -> None:
    """Wait until no task is waiting on a worker thread (a fetch, a prepare): once none is,
    every thread job has returned, and with it every child process the job waited for.

    Tasks are asked, not threads: trio's workers outlive a ``trio.run`` and are reused, and a
    job handed to one is not visible on the thread at once. A task is in a thread from before
    the hand-off until it has the result (nothing is cancelled yet, so nothing is abandoned).
    """
    deadline = trio.current_time() + IDLE_DEADLINE
    while True:
        await trio.testing.wait_all_tasks_blocked()
        waiting = [task.name for task in _all_tasks() if _in_thread(task)]
        if not waiting:
            return
        if trio.current_time() > deadline:
            raise AssertionError(f"tasks still waiting on threads after close: {waiting}")
        await trio.sleep(0.01)


def _all_tasks() -> Iterator[trio.lowlevel.Task]:
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task is None:
            continue
        yield task
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)


def _in_thread(task: trio.lowlevel.Task) -> bool:
    """Whether ``task`` is suspended inside ``trio.to_thread.run_sync``."""
    awaited: Any = task.coro
    while awaited is not None:
        code = getattr(awaited, "cr_code", None) or getattr(awaited, "gi_code", None)
        if code is not None and code.co_name == "to_thread_run_sync":
            return True
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return False


def _describe(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} {stat[stat.rindex(')') + 2]} {command.decode(errors='replace')[:200]}"


def children_of(pid: int) -> list[int]:
    """Children of ``pid`` (zombies included: a child nobody reaped is left behind too)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found
