"""The temporary sibling of a clone (overlay/materialise.py) on a real disk, without servers:
made whole, taken up by the same clone, replaced for another, refused when it is not ours or
is busy, published by one rename, swept only when it carries our sentinel; and entries are
made beneath it without following a symlink."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from artifactfs.errors import UserError
from artifactfs.overlay.materialise import (
    SENTINEL,
    CloneDir,
    Planned,
    TreeWriter,
    check_dest,
    sweep_published,
    temporary_of,
)
from artifactfs.snapshot import Kind

IDENTITY = {"source": "git://example/x", "commit": "a" * 40, "paths": [], "workspace": None}


def made(dest: Path, identity: dict[str, object] = IDENTITY) -> CloneDir:
    clone = CloneDir(dest, identity)
    clone.open()
    return clone


def test_made_whole_then_taken_up_by_the_same_clone(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    clone = made(dest)
    assert not clone.resumed
    assert clone.path == tmp_path / ".dest.artifactfs-clone"
    assert (clone.path / SENTINEL).is_file() and clone.tree.is_dir()
    (clone.tree / "f").write_bytes(b"x")
    clone.mark_done(["r5", "r6"])
    clone.close()
    assert [p.name for p in tmp_path.iterdir()] == [".dest.artifactfs-clone"]

    again = made(dest)
    assert again.resumed and again.is_done("r5") and again.is_done("r6")
    assert not again.is_done("r7")
    assert (again.tree / "f").read_bytes() == b"x"
    again.close()

    other = made(dest, {**IDENTITY, "commit": "b" * 40})  # something else: starts over
    assert other.removed_stale and not other.resumed and not other.is_done("r5")
    assert list(other.tree.iterdir()) == []
    other.close()


def test_a_busy_sibling_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    running = made(dest)
    with pytest.raises(UserError, match="another artifactfs clone is working in"):
        made(dest)
    with pytest.raises(UserError, match="another artifactfs clone is working in"):
        made(dest, {**IDENTITY, "commit": "b" * 40})  # not even to replace it
    assert running.tree.is_dir()
    running.close()


def test_a_sibling_that_is_not_ours_is_left_alone(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    theirs = temporary_of(dest)
    theirs.mkdir()
    (theirs / "data").write_bytes(b"theirs")
    with pytest.raises(UserError, match="is not an unfinished artifactfs clone"):
        made(dest)
    assert (theirs / "data").read_bytes() == b"theirs"
    (theirs / "data").unlink()  # an empty directory: what a crash while removing ours leaves
    made(dest).close()
    assert (theirs / SENTINEL).is_file()

    file_dest = tmp_path / "other"
    temporary_of(file_dest).write_bytes(b"a file")
    with pytest.raises(UserError, match="is not ours"):
        made(file_dest)
    assert temporary_of(file_dest).read_bytes() == b"a file"


def test_half_made_siblings_of_killed_clones_are_swept(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dead = tmp_path / ".dest.artifactfs-clone.new-1-aa"
    dead.mkdir()
    (dead / SENTINEL).write_text("{}")
    (dead / "tree").mkdir()
    busy = tmp_path / ".dest.artifactfs-clone.new-2-bb"
    busy.mkdir()
    (busy / SENTINEL).write_text("{}")
    held = os.open(busy / SENTINEL, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        made(dest).close()
        assert not dead.exists()
        assert busy.exists()
    finally:
        os.close(held)


def test_published_by_one_rename(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    clone = made(dest)
    (clone.tree / "f").write_bytes(b"x")
    clone.publish()
    assert (dest / "f").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def test_a_dest_filled_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    clone = made(dest)
    (clone.tree / "f").write_bytes(b"x")
    dest.mkdir()
    (dest / "mine").write_bytes(b"mine")
    with pytest.raises(UserError, match="was created meanwhile"):
        clone.publish()
    assert os.listdir(dest) == ["mine"]
    assert (clone.tree / "f").read_bytes() == b"x"  # kept for a retry
    clone.close()


def test_a_sibling_left_after_publishing_is_swept(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    clone = made(dest)
    os.rename(clone.tree, dest)  # killed right after the rename
    clone.close()
    assert sweep_published(dest)
    assert not temporary_of(dest).exists()
    assert not sweep_published(dest)
    ours_with_tree = made(tmp_path / "busy")
    assert not sweep_published(tmp_path / "busy")  # still working, and has a tree
    ours_with_tree.close()


def test_check_dest(tmp_path: Path) -> None:
    assert check_dest(str(tmp_path / "new")) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    assert check_dest(str(tmp_path / "empty")) == tmp_path / "empty"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    (tmp_path / "file").write_bytes(b"")
    for name, message in (
        ("full", "exists and is not empty"),
        ("link", "is a symbolic link"),
        ("file", "exists and is not a directory"),
        ("missing/dest", "is not a directory"),
    ):
        with pytest.raises(UserError, match=message):
            check_dest(str(tmp_path / name))


def test_entries_are_never_made_through_a_symlink(tmp_path: Path) -> None:
    """A symlink where a directory is expected (a resumed tree tampered with) fails the
    entry; nothing is written where it points."""
    tree = tmp_path / "tree"
    tree.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (tree / "a").symlink_to(outside)
    writer = TreeWriter(tree)
    try:
        with open(__file__, "rb") as source:
            entry = Planned("r9", b"a/x", Kind.FILE, 0o644, 3)
            with pytest.raises(OSError):
                writer.file(entry, source.fileno(), 3, None)
        with pytest.raises(OSError):
            writer.symlink(Planned("r10", b"a/y", Kind.SYMLINK, 0o777, target=b"/etc"))
        link = Planned("r11", b"a", Kind.FILE, 0o644, 0)
        writer.empty_file(link, None)  # a file's name held by a symlink: the link is replaced
    finally:
        writer.close()
    assert list(outside.iterdir()) == []
    assert (tree / "a").is_file() and not (tree / "a").is_symlink()
