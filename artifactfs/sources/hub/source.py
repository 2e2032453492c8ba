"""A Hugging Face Hub repository as artifactfs uses it: prepare pins the revision to a commit
and indexes the file list into a snapshot; contents come later, by range (ranged.py).

No file bytes are fetched to prepare. The snapshot is keyed by commit, so a restart, or a
branch that did not move, reuses it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import OriginUnreachable, SourceError
from ...snapshot.entries import Kind, NewEntry, RefusedEntry, check_name, printable
from ...snapshot.index import DirectoryListing, snapshot_path, write_snapshot
from ...snapshot.refs import recall, remember
from ..base import Content, ContentHost, PreparedSnapshot, SourceSettings
from .api import HubApi, HubFile
from .content import HubContent, HubRepository
from .hf_cache import HubCache
from .spec import HubSourceSpec

log = logging.getLogger(__name__)

MAX_ENTRIES = 5_000_000
_COMMIT = re.compile(r"[0-9a-f]{40}")
KERNEL_DEFAULT_READ_AHEAD_KIB = 128
COMPLETE_READ_AHEAD_KIB = 4096


def hub_endpoint() -> str:
    """``$HF_ENDPOINT`` as huggingface_hub reads it, else the public Hub."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_token() -> str | None:
    """The token huggingface_hub would use: ``$HF_TOKEN``, else its token file."""
    from huggingface_hub import get_token

    return get_token()


@dataclass
class _Directory:
    files: dict[bytes, HubFile] = field(default_factory=dict)
    directories: dict[bytes, _Directory] = field(default_factory=dict)


class HubSource:
    """A Hub repository opened for one mount (``base.Source``). ``prepare`` blocks: run it in
    a worker thread."""

    read_ahead_kib = KERNEL_DEFAULT_READ_AHEAD_KIB
    """The kernel's default: it also reads that far around every page a program maps
    (``safetensors`` maps its files), and a larger window fetched megabytes past the one
    tensor a reader wanted (docs/benchmarks.md)."""
    complete_read_ahead_kib = COMPLETE_READ_AHEAD_KIB
    """A file already complete in the store costs nothing to read ahead of: its opens get
    large reads (1 MiB requests instead of 128 KiB ones; mount/kernel_read_ahead.py)."""

    def __init__(self, spec: HubSourceSpec, settings: SourceSettings) -> None:
        """The token: one given on purpose (``--token-file``, or the daemon's), else what
        huggingface_hub would use (``HF_TOKEN``, the token file of ``hf auth login``)."""
        self.spec = spec
        self.settings = settings
        self.endpoint = hub_endpoint()
        self.token = settings.credentials.given_token() or hub_token()
        self.offline = settings.offline or _hub_offline()

    @property
    def display(self) -> str:
        return self.spec.display

    def open_content(self, host: ContentHost) -> Content:
        repository = HubRepository(
            self.spec, self.endpoint, self.token, self.offline, HubCache.from_environment(self.spec)
        )
        return HubContent(repository, self.settings, host)

    def worktree(self) -> None:
        """No version-control directory: a writable mount is an overlay alone."""
        return None

    def prepared_offline(self) -> PreparedSnapshot | None:
        """A revision that is a full commit id whose snapshot is on disk needs no Hub."""
        revision = self.spec.revision
        if revision is None or not _COMMIT.fullmatch(revision):
            return None
        path = snapshot_path(self.settings.snapshots_dir, revision, "hub")
        return PreparedSnapshot(path, revision) if path.exists() else None

    def prepare(self) -> PreparedSnapshot:
        """Pin the revision to its commit and make sure that commit's snapshot exists."""
        known = self.prepared_offline()
        if known is not None:  # a commit never changes: no need to ask the Hub
            return known
        snapshots = self.settings.snapshots_dir
        if self.offline:
            return self._from_tier() or self._last_resolved()
        try:
            return self._prepare_online(snapshots)
        except OriginUnreachable as exc:  # not a refusal: the tier may stand in for the Hub
            shared = self._from_tier()
            if shared is None:
                raise
            log.warning("%s: %s; its snapshot came from the tier", self.display, exc)
            return shared

    def _prepare_online(self, snapshots: Path) -> PreparedSnapshot:
        api = HubApi(self.spec, self.endpoint, self.token)
        commit = api.resolve()
        remember(snapshots, "hub", self.spec.url, None, commit.sha)
        path = snapshot_path(snapshots, commit.sha, "hub")
        if path.exists():
            log.info("snapshot of %s already on disk", commit.sha)
            return PreparedSnapshot(path, commit.sha)
        files = list(api.files(commit.sha))
        if commit.gated and files:
            api.check_access(commit.sha, files[0].path)
        root = _tree(files)
        meta = write_snapshot(path, commit.sha, "sha1", commit.timestamp, root, _listing)
        log.info(
            "indexed %s at %s: %d files, %d bytes", self.display, commit.sha, meta.files,
            meta.total_size,
        )  # fmt: skip
        return PreparedSnapshot(path, commit.sha)

    def _from_tier(self) -> PreparedSnapshot | None:
        """Offline or with the Hub unreachable: a pinned commit whose snapshot another node
        shared through the tier (checked and written again here: tier/snapshots.py)."""
        revision = self.spec.revision
        if self.settings.tier is None or revision is None or not _COMMIT.fullmatch(revision):
            return None
        from ...tier.snapshots import snapshot_from_tier

        path = snapshot_path(self.settings.snapshots_dir, revision, "hub")
        if not snapshot_from_tier(self.settings.tier, self.display, revision, path):
            return None
        return PreparedSnapshot(path, revision)

    def _last_resolved(self) -> PreparedSnapshot:
        """Offline: the commit the revision last resolved to in this home, if its snapshot is
        here."""
        snapshots = self.settings.snapshots_dir
        commit = recall(snapshots, "hub", self.spec.url, None)
        path = snapshot_path(snapshots, commit, "hub") if commit is not None else None
        if commit is None or path is None or not path.exists():
            raise SourceError(
                f"offline, and {self.spec.url} was never prepared in this home (mount it once"
                " online, or pin a commit whose snapshot is here)"
            )
        return PreparedSnapshot(path, commit)


def _hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _tree(files: Iterable[HubFile]) -> _Directory:
    """The flat file list as directories; entries with unusable paths are refused."""
    root = _Directory()
    count = 0
    for file in files:
        count += 1
        if count > MAX_ENTRIES:
            raise SourceError(f"the repository lists more than {MAX_ENTRIES} files")
        parts = file.path.encode("utf-8", "surrogateescape").split(b"/")
        try:
            for part in parts:
                check_name(part)
            directory = root
            for part in parts[:-1]:
                if part in directory.files:
                    raise RefusedEntry(f"{printable(part)} is both a file and a directory")
                directory = directory.directories.setdefault(part, _Directory())
            if parts[-1] in directory.directories or parts[-1] in directory.files:
                raise RefusedEntry("listed twice, or both a file and a directory")
        except RefusedEntry as refused:
            log.warning("refused Hub entry %s: %s", printable(file.path.encode()), refused)
            continue
        directory.files[parts[-1]] = file
    return root


def _listing(directory: _Directory) -> DirectoryListing[_Directory]:
    entries: list[NewEntry] = []
    keys: list[_Directory | None] = []
    for name in sorted(set(directory.files) | set(directory.directories)):
        if name in directory.directories:
            entries.append(NewEntry(name, Kind.DIRECTORY, None))
            keys.append(directory.directories[name])
        else:
            file = directory.files[name]
            entries.append(NewEntry(name, Kind.FILE, file.oid, file.size, None, file.sha256))
            keys.append(None)
    return DirectoryListing(entries, keys)
