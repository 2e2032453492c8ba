"""The overlay store on a real disk, without FUSE: node resolution, renames that copy nothing,
crash safety between upper files and the table, stable inode numbers, rebase and discard."""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifactfs.overlay import journal
from artifactfs.overlay.store import (
    FIRST_CREATED,
    Node,
    Overlay,
    Refused,
    WorkspaceChanged,
)
from artifactfs.snapshot import ROOT_INODE, DirectoryListing, Kind, NewEntry, SnapshotIndex
from artifactfs.snapshot.index import snapshot_path, write_snapshot

TREE: dict[str, list[NewEntry]] = {
    "root": [
        NewEntry(b"big", Kind.DIRECTORY, "a" * 40),
        NewEntry(b"f.txt", Kind.FILE, "b" * 40, 10),
        NewEntry(b"empty", Kind.DIRECTORY, "c" * 40),
        NewEntry(b"link", Kind.SYMLINK, "d" * 40, 5, b"f.txt"),
    ],
    "big": [NewEntry(b"n%03d" % i, Kind.FILE, "e" * 40, i) for i in range(100)]
    + [NewEntry(b"sub", Kind.DIRECTORY, "f" * 40)],
    "sub": [NewEntry(b"x", Kind.EXECUTABLE, "1" * 40, 3)],
    "empty": [],
}


def _listing(key: str) -> DirectoryListing[str]:
    entries = TREE[key]
    keys = [e.name.decode() if e.kind is Kind.DIRECTORY else None for e in entries]
    return DirectoryListing(entries, keys)


def _snapshot(directory: Path, commit: str) -> SnapshotIndex:
    path = snapshot_path(directory, commit)
    write_snapshot(path, commit, "sha1", 1_700_000_000, "root", _listing)
    return SnapshotIndex(path)


@pytest.fixture
def lower(tmp_path: Path) -> Iterator[SnapshotIndex]:
    index = _snapshot(tmp_path, "1" * 40)
    yield index
    index.close()


@pytest.fixture
def overlay(tmp_path: Path, lower: SnapshotIndex) -> Iterator[Overlay]:
    store = Overlay.open(tmp_path / "ws", lower)
    yield store
    store.close()


def nobody(ino: int) -> bool:
    return False


def at(overlay: Overlay, path: str) -> Node | None:
    node = overlay.get(ROOT_INODE)
    for part in path.split("/"):
        assert node is not None
        node = overlay.lookup(node, part.encode())
    return node


def names(overlay: Overlay, path: str = "") -> list[bytes]:
    node = at(overlay, path) if path else overlay.get(ROOT_INODE)
    assert node is not None
    return [child.name for child in overlay.children(node, limit=1000)]


def rows(overlay: Overlay) -> int:
    db = sqlite3.connect(overlay.database)
    try:
        return int(db.execute("SELECT count(*) FROM nodes").fetchone()[0])
    finally:
        db.close()


def test_untouched_entries_resolve_to_the_snapshot(overlay: Overlay) -> None:
    f = at(overlay, "f.txt")
    assert f is not None and not f.stored and f.ino == f.lower
    assert names(overlay) == [b"big", b"f.txt", b"empty", b"link"]
    assert overlay.changed_paths_count() == 0
    assert rows(overlay) == 0


def test_renaming_a_lower_directory_is_one_row_and_copies_nothing(overlay: Overlay) -> None:
    big = at(overlay, "big")
    assert big is not None
    before = overlay.current_token()
    overlay.rename(ROOT_INODE, b"big", ROOT_INODE, b"moved", False, False, nobody)
    moved = at(overlay, "moved")
    assert moved is not None and moved.ino == big.ino and not moved.materialized
    # the root was materialized (its 4 children + itself); the moved directory was not
    assert rows(overlay) == 5
    assert os.listdir(overlay.upper_dir) == []
    assert len(names(overlay, "moved")) == 101
    x = at(overlay, "moved/sub/x")
    assert x is not None and x.ino == x.lower and not x.upper
    assert overlay.path_of(x.ino) == b"moved/sub/x"
    assert at(overlay, "big") is None
    assert overlay.changed_paths_count() == 1
    _, changed = journal.changed_since(overlay.database, before)
    assert changed == [b"big", b"big/", b"moved", b"moved/"]


def test_a_child_change_materializes_only_its_directory(overlay: Overlay) -> None:
    overlay.create(at(overlay, "big/sub").ino, b"new", Kind.FILE, 0o640)  # type: ignore[union-attr]
    assert names(overlay, "big/sub") == [b"x", b"new"]
    assert len(names(overlay, "big")) == 101  # big itself is still listed from the snapshot
    created = at(overlay, "big/sub/new")
    assert created is not None and created.ino == FIRST_CREATED and created.mode == 0o640
    assert overlay.upper_path(created.ino).read_bytes() == b""


def test_rename_answers_like_rename_2(overlay: Overlay) -> None:
    root = ROOT_INODE
    big = at(overlay, "big")
    empty = at(overlay, "empty")
    assert big is not None and empty is not None

    def refused(*args: object) -> int:
        with pytest.raises(Refused) as caught:
            overlay.rename(*args)  # type: ignore[arg-type]
        return caught.value.errno

    assert refused(root, b"f.txt", root, b"link", True, False, nobody) == errno.EEXIST
    assert refused(root, b"f.txt", root, b"empty", False, False, nobody) == errno.EISDIR
    assert refused(root, b"empty", root, b"f.txt", False, False, nobody) == errno.ENOTDIR
    assert refused(root, b"empty", root, b"big", False, False, nobody) == errno.ENOTEMPTY
    assert refused(root, b"big", big.ino, b"inside", False, False, nobody) == errno.EINVAL
    assert refused(root, b"nothing", root, b"x", False, False, nobody) == errno.ENOENT
    assert refused(root, b"f.txt", root, b"nothing", False, True, nobody) == errno.ENOENT
    overlay.rename(root, b"big", root, b"empty", False, False, nobody)  # over an empty dir
    assert sorted(names(overlay)) == [b"empty", b"f.txt", b"link"]
    assert len(names(overlay, "empty")) == 101
    overlay.rename(root, b"f.txt", root, b"link", False, True, nobody)  # exchange
    f = at(overlay, "link")
    assert f is not None and f.kind is Kind.FILE


def test_removal_waits_for_the_kernel_to_forget(overlay: Overlay) -> None:
    f = at(overlay, "f.txt")
    assert f is not None
    overlay.remove(ROOT_INODE, b"f.txt", False, lambda ino: True)
    kept = overlay.get(f.ino)
    assert kept is not None and kept.parent == 0
    overlay.forgotten(f.ino)
    assert overlay.get(f.ino) is None  # never the lower row again
    assert at(overlay, "f.txt") is None
    assert overlay.changed_paths_count() == 1
    with pytest.raises(Refused) as caught:
        overlay.remove(ROOT_INODE, b"big", True, nobody)
    assert caught.value.errno == errno.ENOTEMPTY


def test_created_inode_numbers_and_changes_survive_a_reopen(
    tmp_path: Path, lower: SnapshotIndex
) -> None:
    store = Overlay.open(tmp_path / "ws", lower)
    made = [store.create(ROOT_INODE, b"c%d" % i, Kind.FILE, 0o644).ino for i in range(3)]
    store.close()
    store = Overlay.open(tmp_path / "ws", lower)
    try:
        assert [at(store, f"c{i}").ino for i in range(3)] == made  # type: ignore[union-attr]
        assert store.create(ROOT_INODE, b"d", Kind.DIRECTORY, 0o755).ino == made[-1] + 1
        assert store.changed_paths_count() == 4
    finally:
        store.close()


def test_a_crash_between_upper_file_and_table_leaves_the_lower_file(
    tmp_path: Path, lower: SnapshotIndex
) -> None:
    store = Overlay.open(tmp_path / "ws", lower)
    f = at(store, "f.txt")
    assert f is not None
    # a copy-up that died after its rename, before the table said "upper"
    store.upper_path(f.ino).write_bytes(b"half")
    store.staging_path(f.ino).write_bytes(b"ha")
    store.close()
    store = Overlay.open(tmp_path / "ws", lower)
    try:
        assert os.listdir(store.upper_dir) == []
        f = at(store, "f.txt")
        assert f is not None and not f.upper
        # and the completed copy-up is named by the table
        store.staging_path(f.ino).write_bytes(b"copied")
        assert store.copied_up(f.ino).upper
    finally:
        store.close()
    store = Overlay.open(tmp_path / "ws", lower)
    try:
        f = at(store, "f.txt")
        assert f is not None and f.upper
        assert store.upper_path(f.ino).read_bytes() == b"copied"
    finally:
        store.close()


def test_another_commit_with_changes_is_refused_without_them_rebased(
    tmp_path: Path, lower: SnapshotIndex
) -> None:
    (tmp_path / "other").mkdir()
    other = _snapshot(tmp_path / "other", "2" * 40)
    try:
        store = Overlay.open(tmp_path / "ws", lower)
        store.create(ROOT_INODE, b"mine", Kind.FILE, 0o644)
        store.close()
        with pytest.raises(WorkspaceChanged) as caught:
            Overlay.open(tmp_path / "ws", other)
        assert caught.value.count == 1 and "1 changed path" in str(caught.value)
        store = Overlay.open(tmp_path / "ws", lower)
        token = store.current_token()
        store.discard()
        assert store.changed_paths_count() == 0 and os.listdir(store.upper_dir) == []
        assert store.current_token() != token  # a new epoch: git rescans
        store.close()
        store = Overlay.open(tmp_path / "ws", other)
        assert store.base_commit == "2" * 40
        store.close()
    finally:
        other.close()
