"""A third kind of source, whose origin is a dict in this process: ``mem://NAME``.

Why it exists: the read path (operations, gate, content, CAS) must not depend on git or the
Hub, and its failure paths must be testable on demand. A ``MemoryOrigin`` is the "server":
files held as ``path -> bytes | Executable | Symlink | Submodule`` (the types ``make_repo``
takes, so the same tree can be served both ways). It counts what it hands out, can refuse
(``fail``), can lie about a file's bytes (``lie_bytes``) or its size (``lie_size``), and can
hold every fetch until released (``hold``) so that concurrent readers pile up
deterministically.

The source side implements only ``artifactfs.sources.base``: prepare writes a real snapshot
(``write_snapshot``) keyed by a commit id made from the content, blobs are named by their git
blob ids and go into the CAS through ``ContentStore.put``, which verifies them like any other
blob. Nothing under ``artifactfs/fs`` or ``artifactfs/mount`` knows this kind exists:
``memory_kind`` makes a ``SourceKind`` the registry can list.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from artifactfs.cas import GIT_SHA1, ContentStore, Digest, DigestMismatch
from artifactfs.cas.digests import digest_of
from artifactfs.errors import BlobUnavailable, IntegrityError, SourceError, UserError
from artifactfs.snapshot import DirectoryListing, Kind, NewEntry, Row, SnapshotIndex
from artifactfs.snapshot.entries import RefusedEntry, check_name
from artifactfs.snapshot.index import snapshot_path, write_snapshot
from artifactfs.sources.base import (
    BlobReader,
    Content,
    ContentHost,
    PreparedSnapshot,
    Source,
    SourceKind,
    SourceSettings,
    SourceSpec,
)
from tests.helpers.gitrepos import Content as FileContent
from tests.helpers.gitrepos import Executable, Submodule, Symlink

log = logging.getLogger(__name__)

SCHEME = "mem://"
COMMIT_TIME = 1_700_000_000
Tree = dict[str, dict[str, FileContent | None]]
"""Directory path ("" for the root) -> child name -> its content, None for a subdirectory."""


# -- the spec -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemorySpec:
    """``mem://NAME``: the origin registered under NAME (``base.SourceSpec``)."""

    name: str
    ref: str | None = None
    kind: str = "memory"

    @property
    def url(self) -> str:
        return SCHEME + self.name

    @property
    def display(self) -> str:
        return self.url

    def with_ref(self, ref: str | None) -> MemorySpec:
        return replace(self, ref=ref)

    def at_commit(self, commit: str) -> MemorySpec:
        return replace(self, ref=commit)


def parse_memory_source(text: str) -> MemorySpec | None:
    if not text.startswith(SCHEME):
        return None
    name = text[len(SCHEME) :]
    if not name or "/" in name:
        raise UserError(f"not a memory source: {text!r} (use mem://NAME)")
    return MemorySpec(name)


# -- the origin -----------------------------------------------------------------------------


@dataclass
class MemoryOrigin:
    """The "server" of a memory source. Thread-safe: the content fetches in worker threads."""

    files: dict[str, FileContent]
    blob_fetches: Counter[str] = field(default_factory=Counter)
    """Blob id -> how many times its bytes were handed out."""
    prepares: int = 0
    prepare_error: str | None = None
    """When set, prepare fails with this reason (``SourceError``)."""
    _blobs: dict[str, bytes] = field(default_factory=dict)
    """Every blob any prepare announced (old commits stay readable, as in git)."""
    _failing: set[str] = field(default_factory=set)
    _lying_bytes: set[str] = field(default_factory=set)
    _lying_size: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _released: threading.Event = field(default_factory=threading.Event)
    serving: int = 0
    """Fetches being answered right now (held ones included)."""

    def __post_init__(self) -> None:
        self._released.set()

    @property
    def fetches(self) -> int:
        return sum(self.blob_fetches.values())

    def blob_id(self, path: str) -> str:
        """The git blob id of ``path``'s current content (or symlink target)."""
        return _blob_of(self.files[path])[0]

    def fail(self, path: str) -> None:
        """Refuse to hand out ``path``'s blob (``BlobUnavailable``), as a dead origin would."""
        with self._lock:
            self._failing.add(self.blob_id(path))

    def lie_bytes(self, path: str) -> None:
        """Hand out ``path``'s blob with one byte flipped (same length)."""
        with self._lock:
            self._lying_bytes.add(self.blob_id(path))

    def lie_size(self, path: str) -> None:
        """Announce ``path``'s size one byte larger than it is, at the next prepare."""
        with self._lock:
            self._lying_size.add(self.blob_id(path))

    def hold(self) -> None:
        """Make every fetch wait until ``release``."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def listing(self) -> tuple[str, Tree]:
        """A consistent view for prepare: the commit id, and directory -> name -> content
        (None for a subdirectory)."""
        with self._lock:
            files = dict(self.files)
            self.prepares += 1
            if self.prepare_error is not None:
                raise SourceError(self.prepare_error)
            for content in files.values():
                if not isinstance(content, Submodule):
                    oid, data = _blob_of(content)
                    self._blobs[oid] = data
        commit = hashlib.sha1()
        tree: Tree = {"": {}}
        for path in sorted(files):
            commit.update(path.encode() + b"\0" + repr(files[path]).encode() + b"\0")
            parts = path.split("/")
            for depth in range(1, len(parts)):
                parent, directory = "/".join(parts[: depth - 1]), "/".join(parts[:depth])
                tree[parent].setdefault(parts[depth - 1], None)
                tree.setdefault(directory, {})
            tree["/".join(parts[:-1])][parts[-1]] = files[path]
        return commit.hexdigest(), tree

    def announced_size(self, oid: str, size: int) -> int:
        with self._lock:
            return size + 1 if oid in self._lying_size else size

    def serve(self, oid: str) -> bytes:
        """Blocking: the bytes of blob ``oid``, as the origin chooses to send them."""
        with self._lock:
            self.serving += 1
        try:
            self._released.wait()
            with self._lock:
                self.blob_fetches[oid] += 1
                if oid in self._failing:
                    raise BlobUnavailable(f"the memory origin refused blob {oid}")
                data = self._blobs.get(oid)
                if data is None:
                    raise BlobUnavailable(f"the memory origin has no blob {oid}")
                if oid in self._lying_bytes and data:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                return data
        finally:
            with self._lock:
                self.serving -= 1


def _blob_of(content: FileContent) -> tuple[str, bytes]:
    if isinstance(content, Symlink):
        data = content.target
    elif isinstance(content, Executable):
        data = content.content
    elif isinstance(content, bytes):
        data = content
    else:
        raise ValueError("a submodule has no blob")
    return digest_of(GIT_SHA1, data).hex, data


# -- the source -----------------------------------------------------------------------------


class MemorySource:
    """``base.Source`` over a ``MemoryOrigin``."""

    read_ahead_kib: int | None = None

    def __init__(self, spec: MemorySpec, settings: SourceSettings, origin: MemoryOrigin) -> None:
        self.spec = spec
        self.settings = settings
        self.origin = origin

    @property
    def display(self) -> str:
        return self.spec.display

    def prepared_offline(self) -> PreparedSnapshot | None:
        return None  # the origin is always asked: it may have changed

    def prepare(self) -> PreparedSnapshot:
        commit, tree = self.origin.listing()
        path = snapshot_path(self.settings.snapshots_dir, commit, "mem")
        if not path.exists():
            write_snapshot(path, commit, "sha1", COMMIT_TIME, "", self._lister(tree))
        return PreparedSnapshot(path, commit)

    def _lister(self, tree: Tree) -> Callable[[str], DirectoryListing[str]]:
        def list_directory(directory: str) -> DirectoryListing[str]:
            entries: list[NewEntry] = []
            keys: list[str | None] = []
            for name, content in sorted(tree[directory].items()):
                key = f"{directory}/{name}" if directory else name
                try:
                    check_name(name.encode())
                except RefusedEntry as refused:
                    log.warning("refused memory entry %r: %s", key, refused)
                    continue
                entries.append(self._entry(name.encode(), content))
                keys.append(key if content is None else None)
            return DirectoryListing(entries, keys)

        return list_directory

    def _entry(self, name: bytes, content: FileContent | None) -> NewEntry:
        if content is None:
            return NewEntry(name, Kind.DIRECTORY, None)
        if isinstance(content, Submodule):
            return NewEntry(name, Kind.SUBMODULE, content.commit)
        oid, data = _blob_of(content)
        size = self.origin.announced_size(oid, len(data))
        if isinstance(content, Symlink):
            return NewEntry(name, Kind.SYMLINK, oid, size, content.target)
        kind = Kind.EXECUTABLE if isinstance(content, Executable) else Kind.FILE
        return NewEntry(name, kind, oid, size)

    def open_content(self, host: ContentHost) -> Content:
        return MemoryContent(self.origin, self.settings, host)

    def worktree(self) -> None:
        """No version-control directory: a writable mount is an overlay alone."""
        return None


# -- the content ----------------------------------------------------------------------------


@dataclass
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    error: BlobUnavailable | IntegrityError | None = None


class MemoryContent:
    """``base.Content``: a blob is fetched whole on its first read (one fetch however many
    readers wait for it), verified by the CAS, and read from the CAS file."""

    def __init__(self, origin: MemoryOrigin, settings: SourceSettings, host: ContentHost) -> None:
        self._origin = origin
        self._cas = ContentStore(settings.cas_dir)
        self._counters = settings.counters
        self._pending: dict[str, _Pending] = {}
        self._send, self._receive = trio.open_memory_channel[str](math.inf)
        self._io = trio.CapacityLimiter(4)
        self._closed: str | None = None
        self.listed_directories: list[bytes] = []
        """Paths of the directories the operations said were listed (hints)."""
        self.retired_commits: list[str] = []

    def reader(self, snapshot: SnapshotIndex, row: Row) -> BlobReader:
        return _MemoryReader(self, snapshot, row)

    async def cached_bytes(self, snapshot: SnapshotIndex, row: Row) -> int:
        size = await trio.to_thread.run_sync(self._cas.size_of, snapshot.digest_of(row))
        return size or 0

    async def with_size(self, snapshot: SnapshotIndex, row: Row) -> Row:
        return row  # a memory origin announces every size

    async def local_path(self, snapshot: SnapshotIndex, row: Row) -> Path:
        fd = await self.open_fd(snapshot, row)
        os.close(fd)
        return self._cas.path_of(snapshot.digest_of(row))

    def listed(self, snapshot: SnapshotIndex, directory: Row) -> None:
        self.listed_directories.append(snapshot.path_of(directory.inode))

    def retired(self, snapshot: SnapshotIndex) -> None:
        self.retired_commits.append(snapshot.meta.commit)

    async def run(self) -> None:
        """Fetch what readers are missing, each blob in a worker thread of its own."""
        async with trio.open_nursery() as nursery:
            async for oid in self._receive:
                nursery.start_soon(self._fetch, oid)

    def close(self, reason: str) -> None:
        self._closed = reason
        for pending in self._pending.values():
            pending.error = BlobUnavailable(reason)
            pending.done.set()
        self._pending.clear()

    async def ensure(self, digest: Digest) -> None:
        """Return once ``digest`` is in the CAS; raise a ``ReadError`` kind if it cannot be."""
        if self._closed is not None:
            raise BlobUnavailable(self._closed)
        pending = self._pending.get(digest.hex)
        if pending is None:
            pending = self._pending[digest.hex] = _Pending()
            self._send.send_nowait(digest.hex)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error

    async def _fetch(self, oid: str) -> None:
        digest = Digest(GIT_SHA1, oid)

        def fetch() -> None:
            if self._cas.contains(digest):
                return
            data = self._origin.serve(oid)
            self._counters.add_bytes(len(data))
            self._counters.add_blob_fetch(1)
            self._cas.put(digest, (data,), len(data))

        error: BlobUnavailable | IntegrityError | None = None
        try:
            await trio.to_thread.run_sync(fetch, abandon_on_cancel=True)
        except BlobUnavailable as exc:
            error = exc
        except DigestMismatch as exc:
            error = IntegrityError(f"the memory origin sent wrong bytes: {exc}")
        pending = self._pending.pop(oid, None)
        if pending is not None:  # None: closed meanwhile, its readers were told
            pending.error = error
            pending.done.set()

    async def open_fd(self, snapshot: SnapshotIndex, row: Row) -> int:
        digest = snapshot.digest_of(row)
        try:
            fd = await trio.to_thread.run_sync(self._cas.open_fd, digest, limiter=self._io)
        except FileNotFoundError:
            await self.ensure(digest)
            fd = await trio.to_thread.run_sync(self._cas.open_fd, digest, limiter=self._io)
        size = os.fstat(fd).st_size
        if row.size is not None and size != row.size:
            os.close(fd)
            raise IntegrityError(f"blob {row.oid} has {size} bytes, the snapshot says {row.size}")
        return fd

    async def pread(self, fd: int, size: int, offset: int) -> bytes:
        return await trio.to_thread.run_sync(os.pread, fd, size, offset, limiter=self._io)


class _MemoryReader:
    def __init__(self, content: MemoryContent, snapshot: SnapshotIndex, row: Row) -> None:
        self._content = content
        self._snapshot = snapshot
        self._row = row
        self._fd: int | None = None
        self._opening = trio.Lock()

    async def read(self, offset: int, size: int) -> bytes:
        if self._row.size is not None and offset >= self._row.size:
            return b""  # at or past the end: nothing to fetch
        async with self._opening:
            if self._fd is None:
                self._fd = await self._content.open_fd(self._snapshot, self._row)
        return await self._content.pread(self._fd, size, offset)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# -- the kind -------------------------------------------------------------------------------


def memory_kind(origins: Mapping[str, MemoryOrigin]) -> SourceKind:
    """A ``SourceKind`` for ``mem://NAME``, NAME looked up in ``origins``."""

    def open_memory(spec: SourceSpec, settings: SourceSettings) -> Source:
        assert isinstance(spec, MemorySpec)
        origin = origins.get(spec.name)
        if origin is None:
            raise UserError(f"no memory origin named {spec.name!r}")
        return MemorySource(spec, settings, origin)

    return SourceKind(
        "memory",
        parse_memory_source,
        open_memory,
        lambda: None,
        "mem://NAME",
        writable_by_default=False,
    )
