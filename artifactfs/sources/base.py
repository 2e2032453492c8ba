"""What a source is: the one interface every origin implements, and all a mount knows of it.

A mount (``mount/``) and its operations (``fs/``) never name a concrete source. They get a
``Source`` from the registry (``sources/registry.py``), which picks the implementation from
the SOURCE a user typed, and use only what is declared here:

- ``Source.prepare()``: resolve the ref to a commit and make sure that commit's snapshot is on
  disk (blocking, run in a thread). ``Source.prepared_offline()`` says what can be shown
  without asking the origin at all (a pinned commit whose snapshot is on disk), so a mount can
  come up with the origin down.
- ``Source.open_content(host)``: the ``Content`` every generation of the mount reads through,
  with its background work (``Content.run``) and its end (``Content.close``).
- ``Source.read_ahead_kib``: the kernel read-ahead the mount should have (it decides the size
  of FUSE read requests; see ``mount/kernel_read_ahead.py``), or None for the kernel's default.
  ``Source.complete_read_ahead_kib``: a larger one for each open of a file whose bytes are all
  local already (``BlobReader.complete``), or None for the mount's everywhere.

A new origin (an S3 prefix, an OCI artifact) is a new folder under ``sources/`` with a
``SourceKind`` listed in the registry. Sources raise domain errors (``errors.SourceError`` for
a failed prepare, ``errors.ReadError`` kinds for reads); only ``fs/`` turns them into errno.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..cas.usage import UsageRecorder
from ..snapshot import Row, SnapshotIndex

if TYPE_CHECKING:
    from ..tier.access import TierAccess
from .counters import FetchCounters
from .credentials import CredentialProvider


class SourceSpec(Protocol):
    """A validated description of a source, as parsed from what the user typed."""

    @property
    def kind(self) -> str:
        """The name of the source kind that parsed it (``git``, ``hub``)."""
        ...

    @property
    def url(self) -> str:
        """What the registry stores and the transport is given (may hold credentials)."""
        ...

    @property
    def display(self) -> str:
        """The same with credentials masked: what logs, xattrs and messages show."""
        ...

    def with_ref(self, ref: str | None) -> SourceSpec:
        """Apply ``--ref`` (a source whose SOURCE names a revision takes it only once)."""
        ...

    def at_commit(self, commit: str) -> SourceSpec:
        """The same origin pinned to ``commit`` (a full commit id), whatever revision the
        SOURCE names: what ``clone NAME`` shows of a registered repository. The ref a source
        is opened with (``SourceSettings.ref``) is then ``commit`` too."""
        ...

    @property
    def token_variable(self) -> str:
        """The environment variable a token for this kind of origin is given in: the CLI
        hands its value to the daemon (over its socket) as ``add-repo`` runs."""
        ...

    def shown_ref(self, ref: str | None) -> str:
        """The ref a mount of this spec shows (``user.artifactfs.ref``): ``--ref``, else the
        one the SOURCE names, else the origin's default."""
        ...


@dataclass(frozen=True)
class PreparedSnapshot:
    """What prepare hands to the mount: a snapshot on disk and the commit it shows."""

    path: Path
    commit: str


@dataclass(frozen=True)
class SourceSettings:
    """Everything a source is opened with; nothing else reaches it (no globals)."""

    ref: str | None
    """``--ref``: the branch, tag or commit to show (None: the origin's default)."""
    cas_dir: Path
    snapshots_dir: Path
    temp_dir: Path
    """Scratch space on the same file system as the CAS (received packs)."""
    credentials: CredentialProvider
    counters: FetchCounters
    """Where the source counts what it pulled from its origin."""
    io_timeout: float
    """Give up on a silent origin after this many seconds."""
    offline: bool = False
    """Send nothing to the origin: a ref is what it last resolved to in this home, and reads of
    bytes that are not stored fail at once."""
    require_commit: str | None = None
    """Become ready only if the ref resolves to this full commit id (``--require-commit``)."""
    usage: UsageRecorder | None = None
    """Where this process records what it publishes and opens, for the store's size cap
    (cas/usage.py); None in processes that keep no such records (fetch children: their
    parent records what they publish)."""
    depth: int = 1
    """``--depth``: the commits of history a writable mount's git directory holds."""
    tier: TierAccess | None = None
    """The shared tier (``tier.url``): asked before the origin for what the CAS lacks, and
    given what came from the origin (tier/). None: no tier."""


class BlobReader(Protocol):
    """One open file's reads. Nothing is fetched until it reads."""

    async def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; raises a ``ReadError`` kind."""
        ...

    async def complete(self) -> bool:
        """Whether all of its bytes are local already, so no read of it fetches anything
        (what decides the kernel read-ahead of the open). A quick look, never a fetch."""
        ...

    def close(self) -> None: ...


class ContentHost(Protocol):
    """What a mount offers the content it reads through."""

    async def forget_cached(self, snapshot: SnapshotIndex, row: Row) -> None:
        """Make the kernel drop the pages it cached of this entry (bytes it was served were
        found to be wrong). Never call it from a read of the same file."""
        ...


class Content(Protocol):
    """Where the bytes of a mount's entries come from, for every generation it shows."""

    def reader(self, snapshot: SnapshotIndex, row: Row) -> BlobReader:
        """A reader of ``row``'s content."""
        ...

    async def cached_bytes(self, snapshot: SnapshotIndex, row: Row) -> int:
        """How many of ``row``'s bytes are present locally."""
        ...

    async def with_size(self, snapshot: SnapshotIndex, row: Row) -> Row:
        """``row`` with its size known (``row.size_unknown`` entries only; raises
        ``ReadError`` if it cannot be learned)."""
        ...

    async def local_path(self, snapshot: SnapshotIndex, row: Row) -> Path:
        """A whole, verified local file holding ``row``'s bytes (fetched first if absent):
        what a workspace's copy-up clones, so a workspace never starts from a byte the digest
        did not vouch for. Raises a ``ReadError`` kind."""
        ...

    def listed(self, snapshot: SnapshotIndex, directory: Row) -> None:
        """A program began listing ``directory``: a hint of what it will read next."""
        ...

    async def fetch(self, snapshot: SnapshotIndex, rows: list[Row]) -> list[Row]:
        """Get these entries' contents into the store now, whole and verified, in as few
        fetches as the origin allows (``artifactfs prefetch``); return those that could not be
        had (the reason is logged)."""
        ...

    def retired(self, snapshot: SnapshotIndex) -> None:
        """``snapshot`` is no longer served: forget what was kept about it."""
        ...

    async def run(self) -> None:
        """Background work (batched fetches, flushes); runs until cancelled."""
        ...

    def close(self, reason: str) -> None:
        """Fail every waiting and future read at once (the mount is going away)."""
        ...


@dataclass(frozen=True)
class LowerStat:
    """What ``getattr`` shows of an unchanged snapshot entry in a workspace: what a
    version-control index records, so that its stat check passes without reading the file."""

    inode: int
    mode: int
    size: int
    mtime_ns: int
    uid: int
    gid: int


@dataclass(frozen=True)
class RootFile:
    """A read-only file a worktree adds at the root of a writable mount (git: ``.git``)."""

    name: bytes
    content: bytes


class Worktree(Protocol):
    """A source's version-control directory for a writable mount (git: a partial clone kept
    under the workspace directory, outside the mount, so git never goes through FUSE for it).
    All methods block; the mount runs them in a thread."""

    def attach(
        self,
        snapshot: SnapshotIndex,
        directory: Path,
        stat_of: Callable[[Row], LowerStat],
        journal: Path,
        work_tree: Path | None = None,
    ) -> RootFile:
        """Make the version-control directory under ``directory`` show ``snapshot``'s commit,
        unless it already was made for that commit (a restart: then it is left exactly as the
        user's commands left it); ``stat_of`` gives each unchanged entry's attributes for the
        index, ``journal`` is the overlay database the change hook reads, ``work_tree`` where
        the mount is (what the index may record about its place). Returns the file to show at
        the mount's root. Raises ``SourceError``."""
        ...

    def keep_blob(self, row: Row, content: Path) -> None:
        """A copy-up read ``row``'s verified bytes from ``content`` (a CAS file): keep them
        where the version-control tools find them (best effort: never raises)."""
        ...


class Source(Protocol):
    """One origin, opened for one mount."""

    @property
    def display(self) -> str: ...

    @property
    def read_ahead_kib(self) -> int | None: ...

    @property
    def complete_read_ahead_kib(self) -> int | None: ...

    def prepare(self) -> PreparedSnapshot:
        """Resolve the ref and make sure its snapshot is on disk (blocking; raises
        ``SourceError``)."""
        ...

    def prepared_offline(self) -> PreparedSnapshot | None:
        """The snapshot that can be shown without asking the origin, if any (blocking)."""
        ...

    def open_content(self, host: ContentHost) -> Content:
        """The content the mount reads through (call once, on the trio thread)."""
        ...

    def worktree(self) -> Worktree | None:
        """The version-control directory a writable mount of this source gets, if any."""
        ...


@dataclass(frozen=True)
class CacheExport:
    """What ``artifactfs export-hf-cache`` asks of a kind: write one snapshot's files, from the
    CAS, where the origin's own client looks for them (the Hub's: huggingface_hub's cache)."""

    snapshot: Path
    cas_dir: Path
    target: Path | None = None
    """The client's cache directory; None: where the client looks by default."""


@dataclass
class CacheExportReport:
    folder: Path
    """Where the repository's files went (the Hub's: ``<cache>/models--org--name``)."""
    commit: str
    files: int = 0
    bytes: int = 0
    written: int = 0
    present: int = 0
    """Files whose blob was there already (and was left as it is)."""
    how: dict[str, int] = field(default_factory=dict)
    """Blobs written, by how they were copied (``reflink``, ``copy_file_range``, ...)."""
    ref: str | None = None
    """The revision recorded as naming ``commit`` (None: a commit was asked for)."""
    ref_kept: str | None = None
    """The commit the cache's ref already named, left as it was (not ours to move back)."""
    missing: list[str] = field(default_factory=list)
    """Paths whose content the CAS did not hold."""
    failed: list[str] = field(default_factory=list)
    """One line per file that could not be written."""


@dataclass(frozen=True)
class SourceKind:
    """One kind of origin, as the registry knows it."""

    name: str
    parse: Callable[[str], SourceSpec | None]
    """Parse SOURCE text; None if it is not this kind's syntax, ``UserError`` if it is but
    is malformed."""
    open: Callable[[SourceSpec, SourceSettings], Source]
    """Make the source of a spec this kind parsed (blocking: may import its libraries)."""
    preload: Callable[[], None]
    """Import what opening a source of this kind needs (a spare worker does it ahead)."""
    syntax: str = ""
    """What its SOURCE looks like, for the message that refuses one no kind recognises."""
    writable_by_default: bool = False
    """Whether a mount of this kind is a writable workspace unless ``--read-only`` (git: a
    working tree) or read-only unless ``--writable`` (the Hub)."""
    export_cache: Callable[[SourceSpec, CacheExport], CacheExportReport] | None = None
    """Write a snapshot into the origin's own client's cache (blocking); None: no such
    cache."""
