"""A git origin as artifactfs uses it: prepare a snapshot of one ref, then fetch blobs by id.

Prepare is one connection for the tip (ls-refs limited to the candidate ref names, then a
depth-1 fetch with ``blob:none``: the commit and its trees, no file contents), one
``object-info`` exchange for every blob size, and, only if the tree has symlinks, one fetch
of the symlink blobs so targets live in the snapshot. If the snapshot of the resolved commit
already exists, the fetch is skipped: the snapshot is keyed by commit and immutable.

Every method here blocks; the mount runs them in worker threads.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dulwich.objects import Blob, Commit, Tag, Tree

from ...cas import ContentStore, Digest
from ...cas.digests import git_blob_algorithm
from ...errors import SourceError
from ...snapshot.entries import Kind, NewEntry, RefusedEntry, check_symlink_target, printable
from ...snapshot.index import DirectoryListing, SnapshotIndex, snapshot_path, write_snapshot
from ..spec import GitSourceSpec
from . import object_info
from .packs import iter_objects, received_pack
from .transport import REMOTE_FAILURES, describe_failure, open_client
from .trees import CommitTrees, TreeChild, index_trees

log = logging.getLogger(__name__)

_HEX_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_MAX_TAG_DEPTH = 10


@dataclass
class FetchCounters:
    """What this process pulled from the origin; updated from worker threads."""

    bytes_received: int = 0
    blobs_fetched: int = 0
    blob_fetches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self.bytes_received += count

    def add_blob_fetch(self, blobs: int) -> None:
        with self._lock:
            self.blob_fetches += 1
            self.blobs_fetched += blobs


@dataclass(frozen=True)
class PreparedSnapshot:
    path: Path
    commit: str
    object_format: str


def ref_candidates(ref: str | None) -> list[bytes]:
    """Ref names ``ref`` may mean, in git's order of precedence (``git rev-parse``)."""
    if ref is None or ref == "HEAD":
        return [b"HEAD"]
    name = ref.encode("utf-8")
    if name.startswith(b"refs/"):
        return [name]
    return [
        name,
        b"refs/" + name,
        b"refs/tags/" + name,
        b"refs/heads/" + name,
        b"refs/remotes/" + name,
    ]


def resolve_ref(ref: str | None, refs: Mapping[bytes, bytes]) -> str:
    """The object id the server's ``refs`` give for ``ref``; raise SourceError if none."""
    if ref is not None and _HEX_ID.fullmatch(ref):
        return ref
    for candidate in ref_candidates(ref):
        peeled = refs.get(candidate + b"^{}")
        target = peeled or refs.get(candidate)
        if target:
            return target.decode("ascii")
    raise SourceError(f"unknown ref {ref or 'HEAD'!r}")


class GitSource:
    def __init__(
        self, spec: GitSourceSpec, ref: str | None, temp_dir: Path, counters: FetchCounters
    ) -> None:
        self.spec = spec
        self.ref = ref
        self.temp_dir = temp_dir
        self.counters = counters
        self.object_format = "sha1"

    @property
    def display(self) -> str:
        return self.spec.display

    # -- prepare -------------------------------------------------------------------------

    def prepare(self, snapshots_dir: Path, cas: ContentStore) -> PreparedSnapshot:
        """Resolve the ref and make sure its snapshot exists on disk (blocking)."""
        try:
            return self._prepare(snapshots_dir, cas)
        except REMOTE_FAILURES as exc:
            raise SourceError(describe_failure(exc)) from exc

    def _prepare(self, snapshots_dir: Path, cas: ContentStore) -> PreparedSnapshot:
        if self.ref is not None and _HEX_ID.fullmatch(self.ref):
            known = snapshot_path(snapshots_dir, self.ref)
            if known.exists():  # a commit never changes: no need to ask the server
                meta = SnapshotIndex.read_meta(known)
                self.object_format = meta.object_format
                return PreparedSnapshot(known, self.ref, meta.object_format)
        client, path = open_client(self.spec)
        tip: list[str] = []

        def wants(refs: Mapping[bytes, bytes]) -> list[bytes]:
            tip.append(resolve_ref(self.ref, refs))
            if snapshot_path(snapshots_dir, tip[0]).exists():
                return []
            return [tip[0].encode("ascii")]

        raw_trees: dict[str, bytes] = {}
        commits: dict[str, Commit] = {}
        tags: dict[str, Tag] = {}
        known_sizes: dict[str, int] = {}
        object_format = "sha1"
        with received_pack(
            client,
            path,
            wants,
            self.temp_dir,
            self.counters.add_bytes,
            depth=1,
            filter_spec=b"blob:none",
            ref_prefix=ref_candidates(self.ref),
        ) as pack:
            object_format = pack.object_format
            for obj in iter_objects(pack.file, object_format):
                if isinstance(obj, Tree):
                    raw_trees[obj.id.decode("ascii")] = obj.as_raw_string()
                elif isinstance(obj, Commit):
                    commits[obj.id.decode("ascii")] = obj
                elif isinstance(obj, Tag):
                    tags[obj.id.decode("ascii")] = obj
                elif isinstance(obj, Blob):  # a server that ignored the filter (protocol v0)
                    data = obj.as_raw_string()
                    digest = cas.add_bytes(git_blob_algorithm(object_format), data)
                    known_sizes[digest.hex] = len(data)
        if known_sizes:
            log.info(
                "%s ignored the blob filter: kept %d blobs it sent", self.display, len(known_sizes)
            )
        self.object_format = object_format
        existing = snapshot_path(snapshots_dir, tip[0])
        if existing.exists():
            log.info("snapshot of %s already on disk", tip[0])
            return PreparedSnapshot(existing, tip[0], object_format)
        commit = _peel_to_commit(tip[0], commits, tags)
        commit_id = commit.id.decode("ascii")
        final = snapshot_path(snapshots_dir, commit_id)
        if not final.exists():
            self._write_snapshot(final, commit, raw_trees, known_sizes, object_format, cas)
        return PreparedSnapshot(final, commit_id, object_format)

    def _write_snapshot(
        self,
        final: Path,
        commit: Commit,
        raw_trees: dict[str, bytes],
        known_sizes: dict[str, int],
        object_format: str,
        cas: ContentStore,
    ) -> None:
        oid_length = 20 if object_format == "sha1" else 32
        trees = index_trees(commit.tree.decode("ascii"), raw_trees, oid_length)
        blob_paths = trees.blobs((Kind.FILE, Kind.EXECUTABLE, Kind.SYMLINK))
        sizes = dict(known_sizes)
        unknown = sorted(oid for oid in blob_paths if oid not in sizes)
        if unknown:
            client, path = open_client(self.spec)
            answered = object_info.query_sizes(client, path, unknown)
            if answered is None:
                log.info(
                    "%s does not offer object-info: sizes will be learned on demand", self.display
                )
            else:
                sizes.update(answered)
        targets = self._symlink_targets(trees, sizes, cas)

        def list_directory(tree_id: str) -> DirectoryListing[str]:
            entries: list[NewEntry] = []
            keys: list[str | None] = []
            for child in trees.listings[tree_id]:
                entry = _entry_for(child, sizes, targets)
                if entry is not None:
                    entries.append(entry)
                    keys.append(child.oid if child.kind is Kind.DIRECTORY else None)
            return DirectoryListing(entries, keys)

        meta = write_snapshot(
            final,
            commit.id.decode("ascii"),
            object_format,
            int(commit.commit_time),
            trees.root,
            list_directory,
        )
        log.info(
            "indexed %s: %d files, %d bytes (sizes: %s)",
            meta.commit,
            meta.files,
            meta.total_size,
            meta.sizes,
        )

    def _symlink_targets(
        self, trees: CommitTrees, sizes: dict[str, int], cas: ContentStore
    ) -> dict[str, bytes]:
        """Targets of every acceptable symlink, fetched in one batch; refused ones are logged."""
        links = trees.blobs((Kind.SYMLINK,))
        wanted = []
        for oid, path in links.items():
            size = sizes.get(oid)
            if size is not None and size > 4095:
                log.warning("refused symlink %s: target of %d bytes", printable(path), size)
            else:
                wanted.append(oid)
        algorithm = git_blob_algorithm(self.object_format)
        missing = [oid for oid in wanted if not cas.contains(Digest(algorithm, oid))]
        if missing:
            self._fetch_blobs(missing, cas)
        targets: dict[str, bytes] = {}
        for oid in wanted:
            try:
                target = cas.path_of(Digest(algorithm, oid)).read_bytes()
                check_symlink_target(target)
            except FileNotFoundError:
                raise SourceError(f"the server did not send symlink blob {oid}") from None
            except RefusedEntry as refused:
                log.warning("refused symlink %s: %s", printable(links[oid]), refused)
                continue
            targets[oid] = target
        return targets

    # -- blobs ---------------------------------------------------------------------------

    def fetch_blobs(self, oids: Sequence[str], cas: ContentStore) -> set[str]:
        """Fetch blobs by id in one pack; publish each to the CAS; return the ids published."""
        try:
            return self._fetch_blobs(oids, cas)
        except REMOTE_FAILURES as exc:
            raise SourceError(describe_failure(exc)) from exc

    def _fetch_blobs(self, oids: Sequence[str], cas: ContentStore) -> set[str]:
        wanted = set(oids)
        algorithm = git_blob_algorithm(self.object_format)
        client, path = open_client(self.spec)
        got: set[str] = set()
        with received_pack(
            client,
            path,
            lambda refs: [oid.encode("ascii") for oid in oids],
            self.temp_dir,
            self.counters.add_bytes,
            ref_prefix=[b"HEAD"],
        ) as pack:
            for obj in iter_objects(pack.file, pack.object_format):
                if obj.type_name != b"blob":
                    continue
                digest = cas.add_bytes(algorithm, obj.as_raw_string())
                if digest.hex in wanted:
                    got.add(digest.hex)
        self.counters.add_blob_fetch(len(got))
        return got


def _peel_to_commit(oid: str, commits: dict[str, Commit], tags: dict[str, Tag]) -> Commit:
    for _ in range(_MAX_TAG_DEPTH):
        if oid in commits:
            return commits[oid]
        tag = tags.get(oid)
        if tag is None:
            raise SourceError(f"{oid} is not a commit the server sent")
        oid = tag.object[1].decode("ascii")
    raise SourceError(f"tag chain from {oid} is too long")


def _entry_for(
    child: TreeChild, sizes: dict[str, int], targets: dict[str, bytes]
) -> NewEntry | None:
    if child.kind is Kind.SYMLINK:
        target = targets.get(child.oid)
        if target is None:
            return None
        return NewEntry(child.name, child.kind, child.oid, len(target), target)
    if child.kind.has_blob:
        return NewEntry(child.name, child.kind, child.oid, sizes.get(child.oid))
    size = 0 if child.kind is Kind.SUBMODULE else None
    return NewEntry(child.name, child.kind, child.oid, size)
