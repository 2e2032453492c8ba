"""The cache tree a writable mount's index comes with (sources/git/cache_tree.py): every
directory but the root carries the tree id and the entry count git would compute itself, and
git builds its trees from it: ``write-tree`` gives ``HEAD``'s tree, and a commit after edits
has the tree a real clone's commit has given the same edits."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from artifactfs.sources.git.cache_tree import CachedTree, cache_tree_extension
from tests.helpers.gitrepos import Content, Executable, Repo, Symlink, make_repo
from tests.helpers.mounts import mounted
from tests.helpers.servers import GitDaemon

ENV = {
    **os.environ,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "LC_ALL": "C",
    "GIT_AUTHOR_NAME": "A",
    "GIT_AUTHOR_EMAIL": "a@example.com",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "A",
    "GIT_COMMITTER_EMAIL": "a@example.com",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}


def git(tree: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=tree, env=ENV, capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout


def index_extensions(index: bytes) -> dict[bytes, bytes]:
    """The extensions of a version 2 index, by signature."""
    signature, version, count = struct.unpack(">4sII", index[:12])
    assert signature == b"DIRC" and version == 2
    at = 12
    for _ in range(count):
        flags = struct.unpack(">H", index[at + 60 : at + 62])[0]
        name_length = flags & 0x0FFF
        at += (62 + name_length + 8) // 8 * 8  # name, then 1 to 8 NULs to a multiple of 8
    found = {}
    end = len(index) - 20  # the checksum
    while at < end:
        signature, size = struct.unpack(">4sI", index[at : at + 8])
        found[signature] = index[at + 8 : at + 8 + size]
        at += 8 + size
    return found


def parse_cache_tree(data: bytes) -> dict[str, tuple[int, str | None]]:
    """``{path: (entry count, tree id or None)}``, the root as ``""``."""
    found: dict[str, tuple[int, str | None]] = {}
    at = 0

    def one(prefix: str) -> None:
        nonlocal at
        end = data.index(b"\0", at)
        name = data[at:end].decode()
        line_end = data.index(b"\n", end)
        count, subtrees = (int(x) for x in data[end + 1 : line_end].split(b" "))
        at = line_end + 1
        oid = None
        if count >= 0:
            oid = data[at : at + 20].hex()
            at += 20
        path = f"{prefix}{name}" if prefix or name else ""
        found[path] = (count, oid)
        for _ in range(subtrees):
            one(f"{path}/" if path else "")

    one("")
    assert at == len(data)
    return found


@pytest.fixture
def nested(repos: Path) -> Repo:
    files: dict[str, Content] = {
        "README.md": b"# nested\n",
        "src/app/main.py": b"print('main')\n",
        "src/app/util/helpers.py": b"def helper(): ...\n",
        "src/app/util/more.py": b"more = 1\n",
        "src/lib/core.c": b"int core;\n",
        "src/lib/run.sh": Executable(b"#!/bin/sh\necho run\n"),
        "docs/guide.md": b"guide\n",
        "docs/link": Symlink(b"guide.md"),
        "tests/test_main.py": b"def test(): ...\n",
    }
    return make_repo(repos, "nested.git", files)


def test_every_directory_but_the_root_is_cached_as_git_computes_it(
    daemon: GitDaemon, nested: Repo, mnt: Path, home: Path
) -> None:
    with mounted(daemon.url("nested.git"), mnt, home):
        gitdir = Path(git(mnt, "rev-parse", "--absolute-git-dir").strip())
        trees = parse_cache_tree(index_extensions((gitdir / "index").read_bytes())[b"TREE"])
        assert trees[""] == (-1, None)  # the commit's tree is not in the snapshot
        directories = {"src", "src/app", "src/app/util", "src/lib", "docs", "tests"}
        assert set(trees) == {"", *directories}
        for path in directories:
            count = len(git(mnt, "ls-files", "--", path).splitlines())
            assert trees[path] == (count, git(mnt, "rev-parse", f"HEAD:{path}").strip()), path
        assert (
            git(mnt, "write-tree", "--missing-ok").strip()
            == git(mnt, "rev-parse", "HEAD^{tree}").strip()
        )
        assert git(mnt, "diff-index", "--cached", "HEAD") == ""


def test_a_commit_after_edits_has_a_clones_tree(
    daemon: GitDaemon, nested: Repo, mnt: Path, home: Path, tmp_path: Path
) -> None:
    url = daemon.url("nested.git")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", url, str(clone)], env=ENV, check=True)
    with mounted(url, mnt, home):
        for tree in (mnt, clone):
            (tree / "src" / "app" / "util" / "more.py").write_text("more = 2\n")
            (tree / "docs" / "new.md").write_text("new\n")
            git(tree, "add", "-A")
            git(tree, "commit", "-q", "-m", "edits")
        assert git(mnt, "rev-parse", "HEAD^{tree}") == git(clone, "rev-parse", "HEAD^{tree}")
        assert git(mnt, "rev-parse", "HEAD") == git(clone, "rev-parse", "HEAD")
        assert git(mnt, "status", "--porcelain") == ""


def test_a_directory_with_a_path_left_out_is_invalid_and_so_are_its_parents() -> None:
    leaf = CachedTree(b"leaf", "11" * 20, entries=2, complete=False)
    middle = CachedTree(b"middle", "22" * 20, entries=1, subtrees=[leaf])
    sibling = CachedTree(b"sibling", "33" * 20, entries=3)
    root = CachedTree(b"", "44" * 20, entries=1, subtrees=[middle, sibling])
    parsed = parse_cache_tree(cache_tree_extension(root).data)
    assert parsed == {
        "": (-1, None),
        "middle": (-1, None),
        "middle/leaf": (-1, None),
        "sibling": (3, "33" * 20),
    }
    root.subtrees = [sibling]
    assert parse_cache_tree(cache_tree_extension(root).data)[""] == (4, "44" * 20)
