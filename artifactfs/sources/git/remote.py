"""Talking to a git origin: prepare a snapshot of one ref, then fetch blobs by id.

Prepare is one connection for the tip (ls-refs limited to the candidate ref names, then a
depth-1 fetch with ``blob:none``: the commit and its trees, no file contents), one
``object-info`` exchange for every blob size, and, only if the tree has symlinks, one fetch
of the symlink blobs so targets live in the snapshot. If the snapshot of the resolved commit
already exists, the fetch is skipped: the snapshot is keyed by commit and immutable. The pack
of the commit and its trees is kept beside the snapshot (``tip_pack_path``), keyed by commit
too: a writable mount's git directory is made from it (worktree.py) without another fetch.

With a shared tier, that pack is shared once prepared, and a prepare that cannot reach the
origin (or is offline) makes a pinned commit's snapshot from what the tier holds
(tier_prepare.py); symlink blobs are asked of the tier before the origin.

Every remote call opens a fresh client with the credentials as they are then (see
``sources/credentials.py``): a blob fetched hours after the prepare authenticates like the
prepare did, with a rotated token if the token file changed meanwhile.

Every method here blocks; the mount runs them in worker threads.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO

from dulwich.client import GitClient
from dulwich.objects import Blob, Commit, Tag, Tree

from ...cas import ContentStore, Digest
from ...cas.digests import git_blob_algorithm
from ...errors import SourceError
from ...snapshot.entries import (
    SYMLINK_TARGET_MAX,
    Kind,
    NewEntry,
    RefusedEntry,
    check_symlink_target,
    printable,
)
from ...snapshot.index import DirectoryListing, SnapshotIndex, snapshot_path, write_snapshot
from ...snapshot.refs import recall, remember
from ..base import PreparedSnapshot, SourceSettings
from . import object_info
from .packs import iter_objects, keep_pack, object_id, received_pack
from .spec import GitSourceSpec
from .transport import (
    REMOTE_FAILURES,
    credentials_note,
    describe_failure,
    is_auth_failure,
    is_unreachable,
    open_client,
)
from .trees import CommitTrees, TreeChild, index_trees

log = logging.getLogger(__name__)

_HEX_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_MAX_TAG_DEPTH = 10
_BLOB_KINDS = (Kind.FILE, Kind.EXECUTABLE, Kind.SYMLINK)
MAX_TREE_PACK_BYTES = 2 << 30
"""A prepare pack holds one commit and its trees; more than this is a hostile server."""
MAX_UNKNOWN_BLOB_PACK_BYTES = 16 << 30
"""The ceiling for a blob fetch whose sizes the server never told us."""


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


def tip_pack_path(snapshots_dir: Path, commit_id: str) -> Path:
    """Where the pack of a commit and its trees (as prepare received it) is kept: beside the
    snapshot, keyed by commit like it, so content-addressed and immutable."""
    return snapshots_dir / f"git-{commit_id}.pack"


def branch_for(
    ref: str | None, refs: Mapping[bytes, bytes], symrefs: Mapping[bytes, bytes]
) -> str | None:
    """The branch ``ref`` names on the server: the one ``HEAD`` points to for no ref (when the
    server tells), the branch a name resolves to in git's order of precedence, else None (a
    tag, a commit id, another kind of ref)."""
    if ref is not None and _HEX_ID.fullmatch(ref):
        return None
    if ref is None or ref == "HEAD":
        target = symrefs.get(b"HEAD", b"")
        return _branch_name(target)
    for candidate in ref_candidates(ref):
        if candidate in refs:
            return _branch_name(candidate)
    return None


def _branch_name(ref: bytes) -> str | None:
    if not ref.startswith(b"refs/heads/"):
        return None
    try:
        name = ref[len(b"refs/heads/") :].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return name or None


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


class GitRemote:
    """One git origin as a mount talks to it. Blocking methods: run them in worker threads."""

    def __init__(self, spec: GitSourceSpec, settings: SourceSettings) -> None:
        """``settings.credentials`` is asked for a token at every remote call over http(s)."""
        self.spec = spec
        self.ref = settings.ref
        self.settings = settings
        self.temp_dir = settings.temp_dir
        self.counters = settings.counters
        self.credentials = settings.credentials
        self.cas = ContentStore(settings.cas_dir, settings.usage)
        self.object_format = "sha1"
        """Learned from the server (or the snapshot) at prepare."""
        self.head_branch: str | None = None
        """The branch the ref names, as the server's refs told at prepare (``--ref`` a branch,
        or the origin's default branch for no ``--ref``); None if it names no branch (a tag, a
        commit) or the server was not asked. The git directory's local branch (worktree.py)."""

    @property
    def display(self) -> str:
        return self.spec.display

    # -- prepare -------------------------------------------------------------------------

    def prepare(self) -> PreparedSnapshot:
        """Resolve the ref and make sure its snapshot exists on disk (blocking)."""
        known = self.prepared_offline()
        if known is not None:  # a commit never changes: no need to ask the server
            return known
        snapshots = self.settings.snapshots_dir
        if self.settings.offline:
            return self._from_tier() or self._last_resolved(snapshots)
        try:
            prepared = self._prepare(snapshots, self.cas)
        except REMOTE_FAILURES as exc:
            failure = self._failure(exc)
            # an answer (a refusal, no such repository) is never overridden by the tier
            shared = self._from_tier() if is_unreachable(exc) else None
            if shared is None:
                raise failure from exc
            log.warning("%s: %s; its snapshot came from the tier", self.display, failure)
            return shared
        remember(snapshots, "git", self.spec.url, self.ref, prepared.commit)
        self._share_tip_pack(prepared.commit)
        return prepared

    def _last_resolved(self, snapshots: Path) -> PreparedSnapshot:
        """Offline: the commit the ref last resolved to in this home, if its snapshot is here."""
        commit = recall(snapshots, "git", self.spec.url, self.ref)
        path = snapshot_path(snapshots, commit) if commit is not None else None
        if commit is None or path is None or not path.exists():
            raise SourceError(
                f"offline, and {self.ref or 'HEAD'} of {self.display} was never prepared in"
                " this home (mount it once online, or pin a commit whose snapshot is here)"
            )
        self.object_format = SnapshotIndex.read_meta(path).object_format
        return PreparedSnapshot(path, commit)

    def prepared_offline(self) -> PreparedSnapshot | None:
        """A ``--ref`` that is a full commit id whose snapshot is on disk needs no server."""
        if self.ref is None or not _HEX_ID.fullmatch(self.ref):
            return None
        known = snapshot_path(self.settings.snapshots_dir, self.ref)
        if not known.exists():
            return None
        self.object_format = SnapshotIndex.read_meta(known).object_format
        return PreparedSnapshot(known, self.ref)

    def _from_tier(self) -> PreparedSnapshot | None:
        """Without the origin: a pinned commit another node shared (tier_prepare.py)."""
        tier, commit = self.settings.tier, self.ref
        if tier is None or commit is None or not _HEX_ID.fullmatch(commit):
            return None
        from .tier_prepare import prepare_from_tier

        self.object_format = "sha1" if len(commit) == 40 else "sha256"
        snapshots = self.settings.snapshots_dir
        made = prepare_from_tier(
            tier,
            self.display,
            commit,
            self.object_format,
            snapshot_path(snapshots, commit),
            tip_pack_path(snapshots, commit),
            MAX_TREE_PACK_BYTES,
            self._index_kept_pack,
        )
        return self.prepared_offline() if made else None

    def _index_kept_pack(self, kept: Path, sizes: dict[str, int], final: Path) -> None:
        """Index the pinned commit from its kept pack of commit and trees into ``final``, as
        a prepare from the origin does but asking it nothing (sizes not given are learned on
        demand). Raises SourceError (and what a damaged pack raises)."""
        assert self.ref is not None
        with open(kept, "rb") as pack:
            objects = TipObjects.read(pack, self.object_format)
        commit_id, commit = objects.peel_to_commit(self.ref)
        oid_length = 20 if self.object_format == "sha1" else 32
        trees = index_trees(commit.tree.decode("ascii"), objects.trees, oid_length)
        self._write_snapshot(final, commit_id, commit, trees, sizes, self.cas, ask_origin=False)

    def _share_tip_pack(self, commit: str) -> None:
        tier = self.settings.tier
        if tier is not None:
            from .tier_prepare import share_tip_pack

            pack = tip_pack_path(self.settings.snapshots_dir, commit)
            share_tip_pack(tier, self.display, commit, pack)

    def _failure(self, exc: BaseException) -> SourceError:
        """One line for a failed remote call; a refusal also says what credentials we sent."""
        message = describe_failure(exc)
        if is_auth_failure(exc):
            message += "; " + credentials_note(self.spec, self.credentials)
        return SourceError(message)

    def _client(self) -> tuple[GitClient, str]:
        return open_client(self.spec, self.credentials)

    def _prepare(self, snapshots_dir: Path, cas: ContentStore) -> PreparedSnapshot:
        client, path = self._client()
        tip: list[str] = []
        listed: dict[bytes, bytes] = {}

        def wants(refs: Mapping[bytes, bytes]) -> list[bytes]:
            listed.update(refs)
            tip.append(resolve_ref(self.ref, refs))
            if snapshot_path(snapshots_dir, tip[0]).exists():
                return []
            return [tip[0].encode("ascii")]

        with received_pack(
            client,
            path,
            wants,
            self.temp_dir,
            self.counters.add_bytes,
            max_bytes=MAX_TREE_PACK_BYTES,
            depth=1,
            filter_spec=b"blob:none",
            ref_prefix=ref_candidates(self.ref),
        ) as pack:
            self.object_format = pack.object_format
            self.head_branch = branch_for(self.ref, listed, pack.symrefs)
            existing = snapshot_path(snapshots_dir, tip[0])
            if existing.exists():
                log.info("snapshot of %s already on disk", tip[0])
                return PreparedSnapshot(existing, tip[0])
            objects = TipObjects.read(pack.file, pack.object_format)
            commit_id, commit = objects.peel_to_commit(tip[0])
            oid_length = 20 if pack.object_format == "sha1" else 32
            trees = index_trees(commit.tree.decode("ascii"), objects.trees, oid_length)
            known_sizes: dict[str, int] = {}
            if objects.blobs:  # a server that ignored the filter (protocol v0) sent contents
                known_sizes = self._keep_sent_blobs(pack.file, trees, cas)
            self._keep_tip_pack(pack.file, commit_id)
        final = snapshot_path(snapshots_dir, commit_id)
        if not final.exists():
            self._write_snapshot(final, commit_id, commit, trees, known_sizes, cas)
        return PreparedSnapshot(final, commit_id)

    def _keep_tip_pack(self, pack: IO[bytes], commit_id: str) -> None:
        """Keep the commit-and-trees pack beside the snapshot: a writable mount's git
        directory is made from it (worktree.py) without asking the server again."""
        try:
            keep_pack(pack, tip_pack_path(self.settings.snapshots_dir, commit_id))
        except OSError as exc:  # the git directory will fetch it again if it needs it
            log.warning("could not keep the pack of %s: %s", commit_id, exc)

    def tip_pack(self, commit_id: str) -> Path:
        """The kept pack of ``commit_id``'s commit and trees; fetched (one depth-1 ``blob:none``
        fetch) if it is not on disk, e.g. for a snapshot prepared before packs were kept.
        Blocking; raises SourceError."""
        kept = tip_pack_path(self.settings.snapshots_dir, commit_id)
        if kept.exists():
            return kept
        if self.settings.offline:
            raise SourceError(
                f"offline, and the commit and trees of {commit_id} are not on disk (mount it"
                " once online)"
            )
        self._fetch_trees(commit_id, 1, kept, MAX_TREE_PACK_BYTES)
        return kept

    def _fetch_trees(self, commit_id: str, depth: int, target: Path, max_bytes: int) -> None:
        """One ``blob:none`` fetch of ``commit_id`` at ``depth`` (its commits and their trees,
        no contents), kept at ``target``. Blocking; raises SourceError."""
        try:
            client, path = self._client()
            with received_pack(
                client,
                path,
                lambda refs: [commit_id.encode("ascii")],
                self.temp_dir,
                self.counters.add_bytes,
                max_bytes=max_bytes,
                depth=depth,
                filter_spec=b"blob:none",
                ref_prefix=[b"HEAD"],
            ) as pack:
                keep_pack(pack.file, target)
        except REMOTE_FAILURES as exc:
            raise self._failure(exc) from exc
        except OSError as exc:
            raise SourceError(f"cannot keep the pack of {commit_id}: {exc}") from exc

    def history_pack(self, commit_id: str, depth: int, target: Path) -> None:
        """Write to ``target`` a pack of the commits and trees of ``commit_id``'s last
        ``depth`` commits (one ``blob:none`` fetch with that depth). Blocking; raises
        SourceError (offline, the origin unreachable, the disk)."""
        if self.settings.offline:
            raise SourceError("offline: nothing is fetched")
        self._fetch_trees(commit_id, depth, target, MAX_TREE_PACK_BYTES * 4)

    def _keep_sent_blobs(
        self, pack: IO[bytes], trees: CommitTrees, cas: ContentStore
    ) -> dict[str, int]:
        """Publish the blobs a server sent although we asked for none, if the tree uses them."""
        used = trees.blobs(_BLOB_KINDS)
        algorithm = git_blob_algorithm(self.object_format)
        sizes: dict[str, int] = {}
        for obj in iter_objects(pack, self.object_format):
            if isinstance(obj, Blob):
                data = obj.as_raw_string()
                digest = cas.add_bytes_if(algorithm, data, used)
                if digest is not None:
                    sizes[digest.hex] = len(data)
        log.info("%s ignored the blob filter: kept %d blobs it sent", self.display, len(sizes))
        return sizes

    def _write_snapshot(
        self,
        final: Path,
        commit_id: str,
        commit: Commit,
        trees: CommitTrees,
        known_sizes: dict[str, int],
        cas: ContentStore,
        ask_origin: bool = True,
    ) -> None:
        """``ask_origin`` False (the origin down, tier_prepare.py): sizes not known are
        learned on demand, and symlink targets come from the store or the tier only."""
        blob_paths = trees.blobs(_BLOB_KINDS)
        sizes = dict(known_sizes)
        unknown = sorted(oid for oid in blob_paths if oid not in sizes)
        if unknown and ask_origin:
            client, path = self._client()
            answered = object_info.query_sizes(client, path, unknown)
            if answered is None:
                log.info(
                    "%s does not offer object-info: sizes will be learned on demand", self.display
                )
            else:
                sizes.update(answered)
        targets = self._symlink_targets(trees, sizes, cas, ask_origin)

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
            commit_id,
            self.object_format,
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
        self, trees: CommitTrees, sizes: dict[str, int], cas: ContentStore, ask_origin: bool = True
    ) -> dict[str, bytes]:
        """Targets of every acceptable symlink, fetched in one batch; refused ones are logged."""
        links = trees.blobs((Kind.SYMLINK,))
        wanted: dict[str, int | None] = {}
        for oid, path in links.items():
            size = sizes.get(oid)
            if size is not None and size > SYMLINK_TARGET_MAX:
                log.warning("refused symlink %s: target of %d bytes", printable(path), size)
            else:
                wanted[oid] = size
        algorithm = git_blob_algorithm(self.object_format)
        missing: dict[str, int | None] = {}
        for oid, size in wanted.items():  # a target is never learned from an unchecked file
            digest = Digest(algorithm, oid)
            actual = cas.hash_published(digest)
            if actual == oid:
                continue
            if actual is not None:
                where = cas.quarantine(digest)
                log.error(
                    "blob %s in the CAS is damaged: moved to %s, fetching it again", digest, where
                )
            missing[oid] = size
        tier = self.settings.tier
        if missing and tier is not None:  # few: one at a time (a down tier is skipped at once)
            for oid in list(missing):
                if tier.fetch(cas, Digest(algorithm, oid), missing[oid]) is not None:
                    del missing[oid]
        if missing and not ask_origin:
            raise SourceError(f"{len(missing)} symlink blob(s) neither in the store nor the tier")
        if missing:
            self._fetch_blobs(missing, lambda oid: None)
        targets: dict[str, bytes] = {}
        for oid in wanted:
            blob = cas.path_of(Digest(algorithm, oid))
            try:
                if blob.stat().st_size > SYMLINK_TARGET_MAX:
                    raise RefusedEntry(f"target of {blob.stat().st_size} bytes")
                target = blob.read_bytes()
                check_symlink_target(target)
            except FileNotFoundError:
                raise SourceError(f"the server did not send symlink blob {oid}") from None
            except RefusedEntry as refused:
                log.warning("refused symlink %s: %s", printable(links[oid]), refused)
                continue
            targets[oid] = target
        return targets

    # -- blobs ---------------------------------------------------------------------------

    def blob_digest(self, oid: str) -> Digest:
        """The CAS key of a blob of this repository."""
        return Digest(git_blob_algorithm(self.object_format), oid)

    def fetch_blobs(
        self,
        wanted: Mapping[str, int | None],
        published: Callable[[str], None] = lambda oid: None,
    ) -> set[str]:
        """Fetch blobs by id (with their expected sizes, None if unknown) in one pack; publish
        each to the CAS, telling ``published`` as each lands; return the ids published. Blobs
        we did not ask for are dropped."""
        if self.settings.offline:
            raise SourceError("offline: not in the store, and nothing is fetched (--offline)")
        try:
            return self._fetch_blobs(wanted, published)
        except REMOTE_FAILURES as exc:
            raise self._failure(exc) from exc

    def _fetch_blobs(
        self, wanted: Mapping[str, int | None], published: Callable[[str], None]
    ) -> set[str]:
        algorithm = git_blob_algorithm(self.object_format)
        client, path = self._client()
        got: set[str] = set()
        with (
            received_pack(
                client,
                path,
                lambda refs: [oid.encode("ascii") for oid in wanted],
                self.temp_dir,
                self.counters.add_bytes,
                max_bytes=_pack_budget(wanted.values()),
                ref_prefix=[b"HEAD"],
            ) as pack,
            self.cas.publisher() as publisher,
        ):

            def announce(landed: list[Digest]) -> None:
                for digest in landed:
                    got.add(digest.hex)
                    published(digest.hex)

            for obj in iter_objects(pack.file, pack.object_format):
                if isinstance(obj, Blob):
                    announce(publisher.add_if(algorithm, obj.as_raw_string(), wanted))
            announce(publisher.publish())
        self.counters.add_blob_fetch(len(got))
        return got


def _pack_budget(sizes: Iterable[int | None]) -> int:
    """How many bytes a pack of blobs with these sizes may take: their sum plus pack and zlib
    overhead, or a fixed ceiling when a size is unknown."""
    known = list(sizes)
    if any(size is None for size in known):
        return MAX_UNKNOWN_BLOB_PACK_BYTES
    return sum(size or 0 for size in known) * 102 // 100 + 64 * len(known) + 65536


class TipObjects:
    """The non-blob objects of a prepare pack, and whether it carried blobs at all."""

    def __init__(self) -> None:
        self.trees: dict[str, bytes] = {}
        self.commits: dict[str, Commit] = {}
        self.tags: dict[str, Tag] = {}
        self.blobs = 0

    @classmethod
    def read(cls, pack: IO[bytes], object_format: str) -> TipObjects:
        found = cls()
        for obj in iter_objects(pack, object_format):
            if isinstance(obj, Tree):
                found.trees[object_id(obj, object_format)] = obj.as_raw_string()
            elif isinstance(obj, Commit):
                found.commits[object_id(obj, object_format)] = obj
            elif isinstance(obj, Tag):
                found.tags[object_id(obj, object_format)] = obj
            else:
                found.blobs += 1
        return found

    def peel_to_commit(self, oid: str) -> tuple[str, Commit]:
        for _ in range(_MAX_TAG_DEPTH):
            if oid in self.commits:
                return oid, self.commits[oid]
            tag = self.tags.get(oid)
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
