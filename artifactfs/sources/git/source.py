"""The git source (``base.Source``): a remote to prepare from (remote.py) and whole blobs to
read through (content.py)."""

from __future__ import annotations

from ..base import Content, ContentHost, PreparedSnapshot, SourceSettings
from .content import GitContent
from .remote import GitRemote
from .spec import GitSourceSpec

GIT_READ_AHEAD_KIB = 4096
"""Git blobs are fetched whole, so a large kernel read-ahead costs nothing extra, and it makes
the kernel send 1 MiB FUSE reads (its largest) instead of 128 KiB ones."""


class GitSource:
    read_ahead_kib = GIT_READ_AHEAD_KIB

    def __init__(self, spec: GitSourceSpec, settings: SourceSettings) -> None:
        self.remote = GitRemote(spec, settings)

    @property
    def display(self) -> str:
        return self.remote.display

    def prepare(self) -> PreparedSnapshot:
        return self.remote.prepare()

    def prepared_offline(self) -> PreparedSnapshot | None:
        return self.remote.prepared_offline()

    def open_content(self, host: ContentHost) -> Content:
        return GitContent(self.remote, host)

    def worktree(self) -> None:
        """Not yet: a partial clone under the workspace (issue 13, in progress)."""
        return None
