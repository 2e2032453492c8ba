"""Snapshot indexes written straight from a dict, for tests of what reads them (no git)."""

from __future__ import annotations

from pathlib import Path

from artifactfs.snapshot import DirectoryListing, Kind, NewEntry, SnapshotIndex
from artifactfs.snapshot.index import snapshot_path, write_snapshot


def snapshot_of(tmp_path: Path, tree: dict[str, list[NewEntry]], commit: str) -> SnapshotIndex:
    """The index of ``tree`` (directory key -> its entries; the root's key is ``"root"``, a
    subdirectory's is its name) as commit ``commit``, written under ``tmp_path``."""
    path = snapshot_path(tmp_path, commit)
    write_snapshot(
        path,
        commit,
        "sha1",
        1_700_000_000,
        "root",
        lambda key: DirectoryListing(
            tree[key], [e.name.decode() if e.kind is Kind.DIRECTORY else None for e in tree[key]]
        ),
    )
    return SnapshotIndex(path)
