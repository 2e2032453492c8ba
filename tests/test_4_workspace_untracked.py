"""The untracked cache a writable mount's index comes with (sources/git/untracked_cache.py):
git's first ``git status`` in a fresh mount opens no directory, and what every status says,
through edits, ignore rules in ``.gitignore`` files and ``info/exclude``, equals what it says
in a real ``git clone`` of the same commit given the same edits."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from artifactfs.sources.git.untracked_cache import encode_varint, ewah
from tests.helpers.daemons import running_daemon
from tests.helpers.gitrepos import Repo, make_repo
from tests.helpers.mounts import mounted
from tests.helpers.servers import GitDaemon

ENV = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "LC_ALL": "C"}


def git(tree: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=tree, env=env or ENV, capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    assert result.stderr == "", result.stderr  # e.g. "untracked cache is disabled"
    return result.stdout


def status(tree: Path) -> str:
    """``git status`` as people run it: untracked files in the normal mode (the walk the
    cache is made for)."""
    return git(tree, "status", "--porcelain") + git(tree, "status", "--porcelain=v2", "-b")


def walk_counts(tree: Path, trace: Path) -> dict[str, int]:
    """The untracked walk's counters (``opendir``, ``node-creation``…) of one status."""
    trace.unlink(missing_ok=True)
    git(
        tree,
        "status",
        "--porcelain",
        env={**ENV, "GIT_TRACE2_EVENT": str(trace), "GIT_TRACE2_EVENT_NESTING": "10"},
    )
    counts: dict[str, int] = {}
    for line in trace.read_text().splitlines():
        event = json.loads(line)
        if (
            event.get("event") == "data"
            and event.get("category") == "read_directory"
            and str(event["value"]).isdigit()  # the others name the path walked
        ):
            counts[event["key"]] = int(event["value"])
    return counts


@pytest.fixture
def ignoring(repos: Path) -> Repo:
    files: dict[str, bytes] = {
        "README.md": b"# project\n",
        ".gitignore": b"*.log\nbuild/\n",
        "pkg1/.gitignore": b"*.tmp\n",
        "pkg1/deep/er/leaf.py": b"leaf = 1\n",
        "docs/guide.md": b"guide\n",
    }
    for index in range(24):
        files[f"pkg{index % 6}/mod{index}.py"] = f"value = {index}\n".encode()
    return make_repo(repos, "ignoring.git", files)  # type: ignore[arg-type]


def _edit(tree: Path, step: int) -> None:
    """The same edits, step by step, in a mount and in a clone."""
    if step == 0:
        (tree / "notes.txt").write_text("untracked at the root\n")
        (tree / "pkg3" / "new.py").write_text("untracked in a directory\n")
    elif step == 1:
        (tree / "fresh" / "inner").mkdir(parents=True)
        (tree / "fresh" / "inner" / "f.txt").write_text("a new directory\n")
        (tree / "pkg1" / "deep" / "er" / "new.txt").write_text("deep\n")
    elif step == 2:
        (tree / "run.log").write_text("ignored by the root .gitignore\n")
        (tree / "pkg1" / "scratch.tmp").write_text("ignored by pkg1/.gitignore\n")
        (tree / "scratch.tmp").write_text("not ignored at the root\n")
        (tree / "build").mkdir()
        (tree / "build" / "out.o").write_bytes(b"\0" * 10)
    elif step == 3:
        (tree / "pkg1" / ".gitignore").write_text("*.nothing\n")  # scratch.tmp shows now
    elif step == 4:
        exclude = tree / ".git" / "info" / "exclude"
        if exclude.is_file():  # a clone's .git is a directory; a mount's, a gitfile
            exclude.write_text("notes.txt\n")
        else:
            gitdir = Path(exclude.parent.parent.read_text().split("gitdir: ", 1)[1].strip())
            (gitdir / "info").mkdir(exist_ok=True)
            (gitdir / "info" / "exclude").write_text("notes.txt\n")
    elif step == 5:
        os.rename(tree / "pkg2", tree / "pkg2-moved")
        (tree / "pkg4" / "mod4.py").unlink()
        (tree / "fresh" / "inner" / "f.txt").unlink()
        (tree / "fresh" / "inner").rmdir()


def test_the_first_status_opens_no_directory_and_every_status_is_a_clones(
    daemon: GitDaemon, ignoring: Repo, mnt: Path, home: Path, tmp_path: Path
) -> None:
    url = daemon.url("ignoring.git")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", url, str(clone)], env=ENV, check=True)
    with mounted(url, mnt, home):
        first = walk_counts(mnt, tmp_path / "trace.json")
        assert first["opendir"] == 0, first  # no directory read: the cache came with the index
        assert first["node-creation"] == 0 and first["directory-invalidation"] == 0, first
        assert status(mnt) == status(clone)
        for step in range(6):
            for tree in (mnt, clone):
                _edit(tree, step)
            assert status(mnt) == status(clone), f"after step {step}"
        assert "?? scratch.tmp" in status(mnt) and "run.log" not in status(mnt)
        assert "?? pkg1/scratch.tmp" in status(mnt) and "notes.txt" not in status(mnt)


def test_a_remount_at_another_place_gives_the_same_status(
    daemon: GitDaemon, ignoring: Repo, tmp_path: Path, home: Path
) -> None:
    """The cache names the place it was made for; mounted elsewhere, git builds its own,
    silently (the same workspace, registered again with another mount point)."""
    url = daemon.url("ignoring.git")
    first, second = tmp_path / "first", tmp_path / "second"
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "work", url, "--writable", "--mount", str(first))
        (first / "notes.txt").write_text("mine\n")
        (first / "pkg1" / "x.tmp").write_text("ignored\n")
        before = status(first)
        assert "?? notes.txt" in before and "x.tmp" not in before
        artifactfs.ok("remove-repo", "work")  # the workspace stays
        artifactfs.ok("add-repo", "work", url, "--writable", "--mount", str(second))
        assert status(second) == before


def test_varint_and_ewah_as_git_writes_them() -> None:
    assert [encode_varint(n).hex() for n in (0, 1, 127, 128, 255, 16511, 16512)] == [
        "00", "01", "7f", "8000", "807f", "ff7f", "808000"
    ]  # fmt: skip
    assert ewah([]) == bytes.fromhex("0000000000000001000000000000000000000000")
    three = ewah([True, False, True])
    assert three == bytes.fromhex("00000003000000020000000200000000000000000000000500000000")
