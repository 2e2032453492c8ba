"""A Hugging Face Hub repository as artifactfs uses it: prepare pins the revision to a commit
and indexes the file list into a snapshot; contents come later, by range (reader.py).

No file bytes are fetched to prepare. The snapshot is keyed by commit, so a restart, or a
branch that did not move, reuses it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ...cas import ContentStore
from ...errors import SourceError
from ...snapshot.entries import Kind, NewEntry, RefusedEntry, check_name, printable
from ...snapshot.index import DirectoryListing, snapshot_path, write_snapshot
from ..counters import FetchCounters
from ..prepared import PreparedSnapshot
from ..spec import HubSourceSpec
from .api import HubApi, HubFile

log = logging.getLogger(__name__)

MAX_ENTRIES = 5_000_000


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
    def __init__(
        self,
        spec: HubSourceSpec,
        counters: FetchCounters,
        endpoint: str | None = None,
        token: str | None = None,
    ) -> None:
        self.spec = spec
        self.counters = counters
        self.endpoint = endpoint or hub_endpoint()
        self.token = token
        self.object_format = "sha1"

    @property
    def display(self) -> str:
        return self.spec.display

    def prepare(self, snapshots_dir: Path, cas: ContentStore) -> PreparedSnapshot:
        """Pin the revision to its commit and make sure that commit's snapshot exists."""
        api = HubApi(self.spec, self.endpoint, self.token)
        commit = api.resolve()
        path = snapshot_path(snapshots_dir, commit.sha, "hub")
        if path.exists():
            log.info("snapshot of %s already on disk", commit.sha)
            return PreparedSnapshot(path, commit.sha, "sha1")
        files = list(api.files(commit.sha))
        if commit.gated and files:
            api.check_access(commit.sha, files[0].path)
        root = _tree(files)
        meta = write_snapshot(path, commit.sha, "sha1", commit.timestamp, root, _listing)
        log.info(
            "indexed %s at %s: %d files, %d bytes", self.display, commit.sha, meta.files,
            meta.total_size,
        )  # fmt: skip
        return PreparedSnapshot(path, commit.sha, "sha1")


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
