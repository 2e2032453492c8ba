"""The snapshot index: breadth-first inode numbers, range listings, atomic writes."""

from __future__ import annotations

from pathlib import Path

from artifactfs.snapshot import ROOT_INODE, DirectoryListing, Kind, NewEntry, SnapshotIndex
from artifactfs.snapshot.index import snapshot_path, write_snapshot

TREE: dict[str, list[NewEntry]] = {
    "root": [
        NewEntry(b"a", Kind.DIRECTORY, "a" * 40),
        NewEntry(b"b.txt", Kind.FILE, "b" * 40, 10),
        NewEntry(b"c", Kind.DIRECTORY, "c" * 40),
        NewEntry(b"link", Kind.SYMLINK, "d" * 40, 5, b"b.txt"),
        NewEntry(b"mod", Kind.SUBMODULE, "e" * 40, 0),
    ],
    "a": [NewEntry(b"x", Kind.EXECUTABLE, "f" * 40, None), NewEntry(b"y", Kind.FILE, "f" * 40, 3)],
    "c": [NewEntry(b"deep", Kind.DIRECTORY, "1" * 40)],
    "deep": [],
}


def listing(key: str) -> DirectoryListing[str]:
    entries = TREE[key]
    keys = [e.name.decode() if e.kind is Kind.DIRECTORY else None for e in entries]
    return DirectoryListing(entries, keys)


def build(tmp_path: Path) -> SnapshotIndex:
    path = snapshot_path(tmp_path, "9" * 40)
    meta = write_snapshot(path, "9" * 40, "sha1", 1_700_000_000, "root", listing)
    assert meta.files == 4 and meta.total_size == 18 and meta.sizes == "on-demand"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    return SnapshotIndex(path)


def test_breadth_first_numbering_and_lookups(tmp_path: Path) -> None:
    index = build(tmp_path)
    root = index.get(ROOT_INODE)
    assert root is not None
    assert (root.first_child, root.child_count, root.subdirs) == (2, 5, 3)
    names = [row.name for row in index.children(root)]
    assert names == [b"a", b"b.txt", b"c", b"link", b"mod"]
    a = index.lookup(ROOT_INODE, b"a")
    assert a is not None and a.inode == 2
    assert [(r.inode, r.name) for r in index.children(a)] == [(7, b"x"), (8, b"y")]
    c = index.lookup(ROOT_INODE, b"c")
    assert c is not None and c.inode == 4
    deep = index.lookup(c.inode, b"deep")
    assert deep is not None and deep.inode == 9 and index.children(deep) == []
    link = index.lookup(ROOT_INODE, b"link")
    assert link is not None and link.target == b"b.txt" and link.kind is Kind.SYMLINK
    assert index.lookup(ROOT_INODE, b"nope") is None
    assert index.get(999) is None
    assert index.meta.commit_time == 1_700_000_000
    index.close()


def test_listing_resumes_after_any_child(tmp_path: Path) -> None:
    index = build(tmp_path)
    root = index.get(ROOT_INODE)
    assert root is not None
    assert [r.name for r in index.children(root, after_inode=3)] == [b"c", b"link", b"mod"]
    assert [r.name for r in index.children(root, after_inode=2, limit=2)] == [b"b.txt", b"c"]
    assert index.children(root, after_inode=6) == []
    index.close()


def test_sizes_learned_later_are_stored(tmp_path: Path) -> None:
    index = build(tmp_path)
    x = index.lookup(2, b"x")
    assert x is not None and x.size is None
    assert [r.name for r in index.unknown_size_siblings(x)] == [b"x"]
    index.record_sizes({x.inode: 123})
    index.close()
    again = SnapshotIndex(snapshot_path(tmp_path, "9" * 40))
    row = again.get(x.inode)
    assert row is not None and row.size == 123
    again.close()


def test_same_commit_same_inodes(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first, second = build(tmp_path / "one"), build(tmp_path / "two")
    assert all_entries(first) == all_entries(second)
    first.close()
    second.close()


def all_entries(index: SnapshotIndex) -> list[tuple[int, int, bytes]]:
    """Every entry as (inode, parent, name), walked through the index's own queries."""
    found: list[tuple[int, int, bytes]] = []
    pending = [index.get(ROOT_INODE)]
    while pending:
        directory = pending.pop()
        assert directory is not None
        for child in index.children(directory):
            found.append((child.inode, child.parent, child.name))
            if child.kind.is_directory:
                pending.append(child)
    return sorted(found)
