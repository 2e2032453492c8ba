"""The git source: refs, trees and blobs from any git server, through dulwich.

Only the spec is imported here; the source itself (and dulwich) when a mount opens it.
"""

from __future__ import annotations

from ..base import Source, SourceKind, SourceSettings, SourceSpec
from .spec import GitSourceSpec, parse_git_source


def _open(spec: SourceSpec, settings: SourceSettings) -> Source:
    from .source import GitSource

    assert isinstance(spec, GitSourceSpec)
    return GitSource(spec, settings)


def _preload() -> None:
    from . import content, source  # noqa: F401 - dulwich and the fetchers


KIND = SourceKind(
    "git",
    parse_git_source,
    _open,
    _preload,
    "git://, http(s)://, ssh://, file:// or a local path",
    writable_by_default=True,  # a working tree
)

__all__ = ["KIND", "GitSourceSpec"]
