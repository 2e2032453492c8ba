"""The git source (``base.Source``): a remote to prepare from (remote.py), whole blobs to
read through (content.py), and the git directory of a writable mount (worktree.py)."""

from __future__ import annotations

from ..base import Content, ContentHost, PreparedSnapshot, SourceSettings, Worktree
from .content import GitContent
from .remote import GitRemote
from .spec import GitSourceSpec
from .worktree import GitWorktree

GIT_READ_AHEAD_KIB = 4096
"""Git blobs are fetched whole, so a large kernel read-ahead costs nothing extra, and it makes
the kernel send 1 MiB FUSE reads (its largest) instead of 128 KiB ones."""


class GitSource:
    read_ahead_kib = GIT_READ_AHEAD_KIB
    complete_read_ahead_kib = None  # blobs are fetched whole: every open may read far ahead

    def __init__(self, spec: GitSourceSpec, settings: SourceSettings) -> None:
        self.remote = GitRemote(spec, settings)
        self._worktree: GitWorktree | None = None

    @property
    def display(self) -> str:
        return self.remote.display

    def prepare(self) -> PreparedSnapshot:
        return self.remote.prepare()

    def prepared_offline(self) -> PreparedSnapshot | None:
        return self.remote.prepared_offline()

    def open_content(self, host: ContentHost) -> Content:
        return GitContent(self.remote, host)

    def worktree(self) -> Worktree:
        """A partial clone under the workspace, behind a ``.git`` gitfile (worktree.py)."""
        if self._worktree is None:
            self._worktree = GitWorktree(self.remote)
        return self._worktree
