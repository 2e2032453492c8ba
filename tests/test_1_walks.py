"""What a git mount fetches ahead of need (sources/git/walks.py), decided from a real snapshot
index: a read's neighbours, and a walk followed in the order a depth-first walker goes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from artifactfs.snapshot import ROOT_INODE, Kind, NewEntry, Row, SnapshotIndex
from artifactfs.sources.git import walks as ahead
from artifactfs.sources.git.walks import FetchAhead
from tests.helpers.snapshots import snapshot_of


def layout() -> dict[str, list[NewEntry]]:
    """root: a/ (a1/, a2/, 2 files), b/ (b1/, 2 files), big (a 1 MiB file), top.txt."""

    def files(prefix: str) -> list[NewEntry]:
        return [
            NewEntry(f"{prefix}{n}".encode(), Kind.FILE, f"{prefix}{n}".ljust(40, "0"), 10)
            for n in range(2)
        ]

    def directory(name: str) -> NewEntry:
        return NewEntry(name.encode(), Kind.DIRECTORY, name.ljust(40, "d"), None)

    return {
        "root": [
            directory("a"),
            directory("b"),
            NewEntry(b"big", Kind.FILE, "f" * 40, 1 << 20),
            NewEntry(b"top.txt", Kind.FILE, "e" * 40, 5),
        ],
        "a": [directory("a1"), directory("a2"), *files("af")],
        "a1": files("a1f"),
        "a2": files("a2f"),
        "b": [directory("b1"), *files("bf")],
        "b1": files("b1f"),
    }


@pytest.fixture
def index(tmp_path: Path) -> Iterator[SnapshotIndex]:
    opened = snapshot_of(tmp_path, layout(), "c" * 40)
    yield opened
    opened.close()


def row(index: SnapshotIndex, path: str) -> Row:
    found = index.get(ROOT_INODE)
    for name in path.split("/"):
        assert found is not None
        found = index.lookup(found.inode, name.encode())
    assert found is not None
    return found


def oids(*prefixes: str) -> set[str]:
    return {f"{p}{n}".ljust(40, "0") for p in prefixes for n in range(2)}


def test_a_first_miss_asks_for_its_small_neighbours_only(index: SnapshotIndex) -> None:
    guesses = FetchAhead(index, listed=set())
    assert set(guesses.reading(row(index, "top.txt"), missing=True)) == {"e" * 40}  # not big
    assert set(guesses.reading(row(index, "a/af0"), missing=True)) == oids("af")
    assert guesses.reading(row(index, "a/af1"), missing=True) == {}  # asked once
    assert guesses.reading(row(index, "b/bf0"), missing=False) == {}  # a hit guesses nothing


def test_a_walk_is_followed_in_the_order_a_walker_goes(index: SnapshotIndex) -> None:
    listed = {ROOT_INODE}
    guesses = FetchAhead(index, listed)
    listed.add(row(index, "a").inode)
    listed.add(row(index, "a/a2").inode)
    # a walk from the root, met in a/a2: a2, then what follows it: the files of a still to
    # be read, then b, b1 (a1 is behind it); the root's files were guessed already
    guesses.reading(row(index, "top.txt"), missing=True)
    order = list(guesses.reading(row(index, "a/a2/a2f0"), missing=True))
    assert order == [
        *sorted(oids("a2f")),
        *sorted(oids("af")),
        *sorted(oids("bf")),
        *sorted(oids("b1f")),
    ]


def test_a_walk_of_a_subtree_stays_in_it(index: SnapshotIndex) -> None:
    listed = {row(index, "a").inode, row(index, "a/a1").inode}  # the root was never listed
    guesses = FetchAhead(index, listed)
    wanted = guesses.reading(row(index, "a/a1/a1f0"), missing=True)
    assert set(wanted) == oids("a1f", "af", "a2f")


def test_chunks_grow_and_stay_ahead_of_the_walker(
    index: SnapshotIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ahead, "FIRST_CHUNK_FILES", 2)
    listed = {ROOT_INODE, row(index, "a").inode}
    guesses = FetchAhead(index, listed)
    # chunk 1 (2 files): a's own; chunk 2 (4 files): a1, a2
    assert set(guesses.reading(row(index, "a/af0"), missing=True)) == oids("af")
    assert set(guesses.reading(row(index, "a/af1"), missing=False)) == oids("a1f", "a2f")
    # reading in chunk 2, the newest, asks for chunk 3: the rest (the root's small file, b,
    # b1), and the walk ends
    third = guesses.reading(row(index, "a/a1/a1f0"), missing=False)
    assert set(third) == {"e" * 40} | oids("bf", "b1f")
    assert guesses.reading(row(index, "b/b1/b1f0"), missing=False) == {}


def test_listing_alone_guesses_nothing(index: SnapshotIndex) -> None:
    listed = {ROOT_INODE, row(index, "a").inode, row(index, "a/a1").inode}
    guesses = FetchAhead(index, listed)
    assert guesses.reading(row(index, "a/a1/a1f0"), missing=False) == {}


def test_a_large_directory_is_taken_in_pages_across_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ahead, "FIRST_CHUNK_FILES", 4)
    monkeypatch.setattr(ahead, "PAGE", 3)
    files = [NewEntry(f"f{n:02}".encode(), Kind.FILE, f"{n:040x}", 10) for n in range(20)]
    tree = {"root": [NewEntry(b"big", Kind.DIRECTORY, "b" * 40, None)], "big": files}
    index = snapshot_of(tmp_path, tree, "c" * 40)
    try:
        guesses = FetchAhead(index, {ROOT_INODE, row(index, "big").inode})
        first = guesses.reading(row(index, "big/f00"), missing=True)
        assert list(first) == [f"{n:040x}" for n in range(4)]
        # reading on in the directory asks for the next 8, then the last 8, then nothing
        second = guesses.reading(row(index, "big/f01"), missing=False)
        assert list(second) == [f"{n:040x}" for n in range(4, 12)]
        third = guesses.reading(row(index, "big/f05"), missing=False)
        assert list(third) == [f"{n:040x}" for n in range(12, 20)]
        assert guesses.reading(row(index, "big/f19"), missing=False) == {}
    finally:
        index.close()


def test_a_chunk_ends_after_so_many_entries_small_files_or_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ahead, "CHUNK_ROWS_CEILING", 10)
    big = [NewEntry(b"big", Kind.FILE, "f" * 40, 1 << 20)]  # never fetched ahead
    tree: dict[str, list[NewEntry]] = {
        "root": [
            NewEntry(f"d{n:02}".encode(), Kind.DIRECTORY, f"{n:040x}", None) for n in range(30)
        ],
        **{f"d{n:02}": big for n in range(30)},
    }
    index = snapshot_of(tmp_path, tree, "c" * 40)
    try:
        guesses = FetchAhead(index, {ROOT_INODE, row(index, "d00").inode})
        assert guesses.reading(row(index, "d00/big"), missing=True) == {}
        walk = next(iter(guesses._walks.values()))
        # d00 and its file, then the root's entries: it stopped among those, 20 unlooked at
        assert not walk.done and walk.partly is not None
        assert walk.partly[0].inode == ROOT_INODE and len(guesses._guessed) == 2
    finally:
        index.close()
