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
    _, changed = journal.changed_since(journal.hook_files_of(overlay.database), before)
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


def test_owner_and_times_are_rows_and_copy_nothing(tmp_path: Path, lower: SnapshotIndex) -> None:
    store = Overlay.open(tmp_path / "ws", lower)
    f, big = at(store, "f.txt"), at(store, "big")
    assert f is not None and big is not None and f.uid is None and f.gid is None
    token = store.current_token()
    owned = store.set_owner(f.ino, 1234, None)
    assert (owned.uid, owned.gid, owned.upper, owned.stored) == (1234, None, False, True)
    assert store.set_owner(f.ino, None, 5678).uid == 1234  # None leaves the owner
    assert os.listdir(store.upper_dir) == []  # no content copied
    assert store.set_times(big.ino, 1_002_003_000, 4_005_006_000).atime_ns == 1_002_003_000
    assert store.set_times(big.ino, None, 7).atime_ns == 1_002_003_000
    assert not store.get(big.ino).materialized  # type: ignore[union-attr]
    _, changed = journal.changed_since(journal.hook_files_of(store.database), token)
    assert {b"f.txt", b"big"} <= set(changed)
    store.close()
    store = Overlay.open(tmp_path / "ws", lower)
    try:
        f, big = at(store, "f.txt"), at(store, "big")
        assert f is not None and (f.uid, f.gid, f.upper) == (1234, 5678, False)
        assert big is not None and (big.atime_ns, big.mtime_ns) == (1_002_003_000, 7)
        assert store.changed_paths_count() == 2
    finally:
        store.close()


def test_entries_created_and_removed_move_the_directory_times(overlay: Overlay) -> None:
    empty = at(overlay, "empty")
    assert empty is not None
    overlay.set_times(empty.ino, 1, 1)
    overlay.create(empty.ino, b"x", Kind.FILE, 0o644)
    created = overlay.get(empty.ino)
    assert created is not None and created.mtime_ns > 1 and created.ctime_ns > 1  # type: ignore[operator]
    overlay.set_times(empty.ino, 1, 1)
    overlay.rename(empty.ino, b"x", ROOT_INODE, b"y", False, False, nobody)
    moved = overlay.get(empty.ino)
    assert moved is not None and moved.mtime_ns > 1  # type: ignore[operator]
    overlay.set_times(ROOT_INODE, 1, 1)
    overlay.remove(ROOT_INODE, b"y", False, nobody)
    root = overlay.get(ROOT_INODE)
    assert root is not None and root.mtime_ns > 1  # type: ignore[operator]


def test_fifos_and_sockets_are_nodes_without_upper_files(overlay: Overlay) -> None:
    fifo = overlay.create(ROOT_INODE, b"pipe", Kind.FIFO, 0o640)
    sock = overlay.create(ROOT_INODE, b"sock", Kind.SOCKET, 0o755)
    assert fifo.st_mode == 0o10640 and sock.st_mode == 0o140755
    assert not fifo.upper and not fifo.is_file and os.listdir(overlay.upper_dir) == []
    overlay.remove(ROOT_INODE, b"pipe", False, nobody)
    assert overlay.get(fifo.ino) is None


def test_xattrs_of_nodes_without_upper_files(tmp_path: Path, lower: SnapshotIndex) -> None:
    store = Overlay.open(tmp_path / "ws", lower)
    big = at(store, "big")
    assert big is not None
    store.set_xattr(big.ino, b"user.a", b"1")
    store.set_xattr(big.ino, b"user.b", b"\x00two")
    store.set_xattr(big.ino, b"user.a", b"one")
    with pytest.raises(Refused) as refused:
        store.remove_xattr(big.ino, b"user.none")
    assert refused.value.errno == errno.ENODATA
    made = store.create(ROOT_INODE, b"d", Kind.DIRECTORY, 0o755)
    store.set_xattr(made.ino, b"user.gone", b"x")
    store.close()
    store = Overlay.open(tmp_path / "ws", lower)
    try:
        assert store.xattr_names(big.ino) == [b"user.a", b"user.b"]
        assert store.xattr(big.ino, b"user.a") == b"one"
        assert store.xattr(big.ino, b"user.b") == b"\x00two"
        store.remove_xattr(big.ino, b"user.a")
        assert store.xattr(big.ino, b"user.a") is None
        store.remove(ROOT_INODE, b"d", True, nobody)
        assert store.xattr_names(made.ino) == []
    finally:
        store.close()


def test_a_first_schema_database_is_migrated_in_place(tmp_path: Path, lower: SnapshotIndex) -> None:
    store = Overlay.open(tmp_path / "ws", lower)
    made = store.create(ROOT_INODE, b"old", Kind.DIRECTORY, 0o700)
    store.close()
    db = sqlite3.connect(tmp_path / "ws" / "overlay.sqlite")
    for column in ("atime_ns", "uid", "gid"):  # back to this morning's schema
        db.execute(f"ALTER TABLE nodes DROP COLUMN {column}")
    db.execute("DROP TABLE xattrs")
    db.execute("PRAGMA user_version = 0")
    db.commit()
    db.close()
    store = Overlay.open(tmp_path / "ws", lower)
    try:
        old = at(store, "old")
        assert old is not None and old.ino == made.ino and old.mode == 0o700
        assert store.set_owner(old.ino, 7, 8).uid == 7
        store.set_xattr(old.ino, b"user.k", b"v")
        assert store._writer.execute("PRAGMA user_version").fetchone()[0] == 2
    finally:
        store.close()


def test_a_discard_is_journalled_before_the_hook_sees_a_new_epoch(overlay: Overlay) -> None:
    """Until the hook's files show the new epoch, a token of the old one must be told of every
    path the discard reverts: a ``git status`` in between then sees the tree as it now is."""
    f = at(overlay, "f.txt")
    assert f is not None
    big = at(overlay, "big")
    assert big is not None
    overlay.create(ROOT_INODE, b"mine", Kind.FILE, 0o644)
    overlay.set_times(f.ino, 1, 2)
    for second in range(journal.SEGMENT_RECORDS + 1):  # a newer segment: the two are older
        overlay.set_times(big.ino, second, second)
    token = overlay.current_token()  # a status ran here: it knows of both changes
    hook_files = journal.hook_files_of(overlay.database)
    seen: list[tuple[str, list[bytes]]] = []
    reset = overlay._hook_files.reset

    def reset_after_looking(epoch: str) -> None:
        seen.append(journal.changed_since(hook_files, token))  # what the hook answers now
        reset(epoch)

    overlay._hook_files.reset = reset_after_looking  # type: ignore[method-assign]
    overlay.discard()
    ((now, paths),) = seen
    assert now.split(":")[1] == token.split(":")[1]  # still the old epoch, and yet:
    assert {b"mine", b"f.txt"} <= set(paths)
    assert journal.changed_since(hook_files, token)[1] == [journal.EVERYTHING]  # after it
