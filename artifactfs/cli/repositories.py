"""The daemon's registered repositories as the cache commands see them: read from the state
home (``registry.sqlite`` and ``snapshots/``), so that ``cache``, ``pin`` and ``prefetch`` need
no daemon to answer."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..home import ArtifactHome, default_home


@dataclass
class Repository:
    name: str
    mountpoint: str
    state: str
    snapshot: Path | None
    """Its current commit's snapshot (None: not prepared yet, or not on disk)."""
    source: str = ""
    ref: str | None = None


def home() -> ArtifactHome:
    return ArtifactHome(default_home())


def registered(home: ArtifactHome) -> list[Repository]:
    """The daemon's registered repositories (none if no daemon ever ran on this home)."""
    if not home.registry_path.exists():
        return []
    from ..daemon.registry import Registry
    from ..snapshot.index import snapshot_path
    from ..sources import parse_source

    registry = Registry(home.registry_path)
    try:
        repos = registry.all()
    finally:
        registry.close()
    found = []
    for repo in repos:
        snapshot = None
        if repo.commit:
            path = snapshot_path(home.snapshots_dir, repo.commit, parse_source(repo.source).kind)
            snapshot = path if path.exists() else None
            if snapshot is None:
                print(f"artifactfs: the snapshot of {repo.name} is not on disk ({path}): its "
                      "blobs count as unreferenced", file=sys.stderr)  # fmt: skip
        found.append(
            Repository(repo.name, repo.mountpoint, repo.state, snapshot, repo.source, repo.ref)
        )
    return found


def snapshot_digests(path: Path) -> set[tuple[str, str]]:
    from ..snapshot import SnapshotIndex

    index = SnapshotIndex(path)
    try:
        return {(d.algorithm.name, d.hex) for d in index.content_digests()}
    finally:
        index.close()


def known(home: ArtifactHome, name: str) -> Repository:
    for repo in registered(home):
        if repo.name == name:
            return repo
    raise UserError(f"no repository named {name!r} is registered")
