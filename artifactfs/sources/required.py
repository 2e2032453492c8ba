"""``--require-commit``: a source that refuses to show anything but one commit.

A CI job that mounts a branch but must test exactly the commit it was triggered for asks for
the commit: the mount becomes ready only if the ref resolves to it, and fails with one line
saying what it resolved to otherwise (a branch that moved on, a tag that was re-pointed, an
origin serving something else). A refresh obeys it too. It wraps any kind of source, so no
kind needs to know.
"""

from __future__ import annotations

from ..errors import SourceError
from .base import Content, ContentHost, PreparedSnapshot, Source, Worktree


class RequiredCommit:
    def __init__(self, inner: Source, commit: str, ref: str | None) -> None:
        self.inner = inner
        self.commit = commit
        self.ref = ref

    @property
    def display(self) -> str:
        return self.inner.display

    @property
    def read_ahead_kib(self) -> int | None:
        return self.inner.read_ahead_kib

    @property
    def complete_read_ahead_kib(self) -> int | None:
        return self.inner.complete_read_ahead_kib

    def _checked(self, prepared: PreparedSnapshot) -> PreparedSnapshot:
        if prepared.commit != self.commit:
            raise SourceError(
                f"{self.ref or 'the default branch'} of {self.inner.display} resolved to"
                f" {prepared.commit}, not the required commit {self.commit}"
            )
        return prepared

    def prepare(self) -> PreparedSnapshot:
        return self._checked(self.inner.prepare())

    def prepared_offline(self) -> PreparedSnapshot | None:
        prepared = self.inner.prepared_offline()
        return None if prepared is None else self._checked(prepared)

    def open_content(self, host: ContentHost) -> Content:
        return self.inner.open_content(host)

    def worktree(self) -> Worktree | None:
        return self.inner.worktree()
