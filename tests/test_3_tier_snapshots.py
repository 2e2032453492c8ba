"""Snapshots through the tier (tier/snapshots.py), on a shared directory (``file://``): what one
node shares another gets back entry for entry, and a snapshot someone tampered with in the
bucket is refused whatever the tampering, never opened as a mount's snapshot."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from artifactfs.snapshot import Kind, NewEntry, SnapshotIndex
from artifactfs.snapshot.index import snapshot_path
from artifactfs.tier.access import TierAccess
from artifactfs.tier.keys import snapshot_key
from artifactfs.tier.location import TierLocation
from artifactfs.tier.snapshots import (
    file_from_tier,
    share_file,
    share_snapshot,
    snapshot_from_tier,
)
from tests.helpers.snapshots import snapshot_of

COMMIT = "ab" * 20
OTHER = "cd" * 20
SOURCE = "git://example.invalid/repo.git"
TREE = {
    "root": [
        NewEntry(b"README", Kind.FILE, "11" * 20, 7),
        NewEntry(b"bin", Kind.DIRECTORY, "22" * 20),
        NewEntry(b"link", Kind.SYMLINK, "33" * 20, 6, b"README"),
        NewEntry(b"sub", Kind.SUBMODULE, "44" * 20, 0),
    ],
    "bin": [
        NewEntry(b"tool", Kind.EXECUTABLE, "55" * 20, 12),
        NewEntry(b"unknown-size", Kind.FILE, "66" * 20, None),
    ],
}


def tier_of(tmp_path: Path, node: str) -> TierAccess:
    home = tmp_path / node
    (home / "cas").mkdir(parents=True, exist_ok=True)
    return TierAccess(TierLocation(f"file://{tmp_path / 'tier'}"), home, home / "cas")


def rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM entries ORDER BY inode").fetchall()


def shared(tmp_path: Path) -> Path:
    """Node A's snapshot of ``TREE``, shared; the path of the object in the tier."""
    (tmp_path / "a-snapshots").mkdir()
    index = snapshot_of(tmp_path / "a-snapshots", TREE, COMMIT)
    index.close()
    tier = tier_of(tmp_path, "node-a")
    assert share_snapshot(tier, SOURCE, COMMIT, index.path)
    assert not share_snapshot(tier, SOURCE, COMMIT, index.path)  # there already
    return tmp_path / "tier" / snapshot_key(SOURCE, COMMIT)


def test_a_shared_snapshot_comes_back_entry_for_entry(tmp_path: Path) -> None:
    shared(tmp_path)
    final = snapshot_path(tmp_path / "b-snapshots", COMMIT)
    assert snapshot_from_tier(tier_of(tmp_path, "node-b"), SOURCE, COMMIT, final)
    assert rows(final) == rows(snapshot_path(tmp_path / "a-snapshots", COMMIT))
    original = snapshot_path(tmp_path / "a-snapshots", COMMIT)
    assert SnapshotIndex.read_meta(final) == SnapshotIndex.read_meta(original)


def test_nothing_in_the_tier_is_no_snapshot(tmp_path: Path) -> None:
    final = snapshot_path(tmp_path / "b-snapshots", COMMIT)
    assert not snapshot_from_tier(tier_of(tmp_path, "node-b"), SOURCE, COMMIT, final)
    assert not snapshot_from_tier(None, SOURCE, COMMIT, final)
    assert not snapshot_from_tier(tier_of(tmp_path, "node-b"), SOURCE, "main", final)
    assert not final.exists()


TAMPERINGS = {
    "dot-dot name": "UPDATE entries SET name = CAST('..' AS BLOB) WHERE inode = 2",
    "slash in a name": "UPDATE entries SET name = CAST('a/b' AS BLOB) WHERE inode = 2",
    "name .git": "UPDATE entries SET name = CAST('.GIT' AS BLOB) WHERE inode = 3",
    "text name": "UPDATE entries SET name = 'README' WHERE inode = 2",
    "unknown kind": "UPDATE entries SET kind = 6 WHERE inode = 2",
    "bad object id": "UPDATE entries SET oid = '../../etc/passwd' WHERE inode = 2",
    "short object id": "UPDATE entries SET oid = 'abc' WHERE inode = 2",
    "negative size": "UPDATE entries SET size = -1 WHERE inode = 2",
    "symlink with NUL": "UPDATE entries SET target = X'410042', size = 3 WHERE inode = 4",
    "symlink size lies": "UPDATE entries SET size = 99 WHERE inode = 4",
    "target on a file": "UPDATE entries SET target = X'41' WHERE inode = 2",
    "bad sha256": "UPDATE entries SET sha256 = 'xyz' WHERE inode = 2",
    "other commit": f"UPDATE meta SET value = '{OTHER}' WHERE key = 'commit'",
    "other schema": "UPDATE meta SET value = '1' WHERE key = 'schema_version'",
    "other format": "UPDATE meta SET value = 'md5' WHERE key = 'object_format'",
    "name twice": "DROP INDEX entries_by_name; UPDATE entries SET name = CAST('bin' AS BLOB)"
    " WHERE inode = 2",
    "no entries table": "DROP TABLE entries",
    # harmless here, but a view can be endless (a recursive one): no view is ever queried
    "entries a view": "ALTER TABLE entries RENAME TO kept; CREATE VIEW entries AS"
    " SELECT * FROM kept",
    "meta a view": "ALTER TABLE meta RENAME TO kept; CREATE VIEW meta AS SELECT * FROM kept",
    "an extra table": "CREATE TABLE extra (x)",
}


@pytest.mark.parametrize("change", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_a_tampered_snapshot_is_refused(
    change: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = shared(tmp_path)
    with sqlite3.connect(key) as db:
        db.executescript(change)
    final = snapshot_path(tmp_path / "b-snapshots", COMMIT)
    assert not snapshot_from_tier(tier_of(tmp_path, "node-b"), SOURCE, COMMIT, final)
    assert not final.exists()
    assert not list(final.parent.glob(".*"))  # nothing half-written left behind
    assert refusals(caplog) == 1


def test_garbage_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = shared(tmp_path)
    key.chmod(0o644)
    key.write_bytes(b"SQLite format 3\0" + b"\xff" * 5000)
    final = snapshot_path(tmp_path / "b-snapshots", COMMIT)
    assert not snapshot_from_tier(tier_of(tmp_path, "node-b"), SOURCE, COMMIT, final)
    assert not final.exists()
    assert refusals(caplog) == 1


def refusals(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        1
        for r in caplog.records
        if r.levelname == "ERROR" and "the tier's snapshot of" in r.getMessage()
    )


def test_a_file_through_the_tier_is_kept_only_once_checked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``share_file``/``file_from_tier`` (a git mount's kept pack): the check decides, a
    refused download leaves nothing, and a file already there is never replaced."""
    source = tmp_path / "pack"
    source.write_bytes(b"PACK and its objects")
    node_a, node_b = tier_of(tmp_path, "node-a"), tier_of(tmp_path, "node-b")
    assert share_file(node_a, "snapshots/x/y.pack", source)
    assert not share_file(node_a, "snapshots/x/y.pack", source)

    def refuse(path: Path) -> None:
        raise ValueError("it does not hold the commit")

    kept = tmp_path / "b" / "kept.pack"
    assert not file_from_tier(node_b, "snapshots/x/y.pack", kept, refuse, 1 << 20)
    assert not kept.exists() and not list(kept.parent.iterdir())
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "the tier's kept.pack is refused: it does not hold the commit"
    ]
    assert not file_from_tier(node_b, "snapshots/x/y.pack", kept, lambda path: None, 8)
    assert not kept.exists()  # larger than allowed
    assert file_from_tier(node_b, "snapshots/x/y.pack", kept, lambda path: None, 1 << 20)
    assert kept.read_bytes() == b"PACK and its objects"
    assert not file_from_tier(node_b, "snapshots/x/none.pack", tmp_path / "b" / "n", print, 99)
