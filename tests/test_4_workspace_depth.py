"""``--depth N`` through a real mount and a real daemon: the git CLI in the mount sees the last
N commits (their trees at hand, their files fetched when asked for); a bad ``--depth`` is
refused with one line and exit status 2 by ``mount`` and ``add-repo`` alike."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.daemons import run_cli, running_daemon
from tests.helpers.gitrepos import Repo, commit_files, make_repo
from tests.helpers.mounts import mounted
from tests.helpers.servers import GitDaemon

ENV = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "LC_ALL": "C"}


def git(tree: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=tree, env=ENV, capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout


@pytest.fixture
def five(repos: Path) -> tuple[Repo, list[str]]:
    """A repository of 5 commits; their ids, newest first."""
    repo = make_repo(repos, "five.git", {"a.txt": b"one\n"})
    commits = [repo.commit]
    for n in range(2, 6):
        repo = commit_files(repo, {"a.txt": b"v%d\n" % n, f"f{n}.txt": b"%d\n" % n}, f"c{n}")
        commits.append(repo.commit)
    return repo, commits[::-1]


def git_dir_of(mnt: Path) -> Path:
    text = (mnt / ".git").read_text()
    assert text.startswith("gitdir: ")
    return Path(text.removeprefix("gitdir: ").strip())


def test_a_mount_with_depth_3(
    daemon: GitDaemon, five: tuple[Repo, list[str]], mnt: Path, home: Path
) -> None:
    _, commits = five
    with mounted(daemon.url("five.git"), mnt, home, "--depth", "3"):
        assert git(mnt, "log", "--format=%H") == "".join(f"{c}\n" for c in commits[:3])
        assert (git_dir_of(mnt) / "shallow").read_text() == f"{commits[2]}\n"
        assert git(mnt, "show", "HEAD~2", "--stat", "--format=%s") == (
            "c3\n\n a.txt  | 1 +\n f2.txt | 1 +\n f3.txt | 1 +\n 3 files changed, 3 insertions(+)\n"
        )
        assert git(mnt, "status", "--porcelain=v2") == ""


def test_a_mount_by_default_shows_one_commit(
    daemon: GitDaemon, five: tuple[Repo, list[str]], mnt: Path, home: Path
) -> None:
    _, commits = five
    with mounted(daemon.url("five.git"), mnt, home):
        assert git(mnt, "log", "--format=%H") == f"{commits[0]}\n"
        assert (git_dir_of(mnt) / "shallow").read_text() == f"{commits[0]}\n"


@pytest.mark.parametrize("bad", ["0", "abc", "-1", "1000001", "2.5", ""])
def test_a_bad_depth_is_refused_by_mount(bad: str, mnt: Path, home: Path) -> None:
    result = run_cli("mount", "git://127.0.0.1/x.git", str(mnt), f"--depth={bad}", home=home)
    assert result.returncode == 2
    assert result.stderr == (
        f"artifactfs: --depth must be a whole number from 1 to 1000000, not {bad!r}\n"
    )
    assert not home.exists() or not any((home / "workspaces").glob("*"))


def test_add_repo_with_depth(daemon: GitDaemon, five: tuple[Repo, list[str]], home: Path) -> None:
    _, commits = five
    with running_daemon(home) as artifactfs:
        for bad in ("0", "abc"):
            refused = artifactfs.cli("add-repo", "deep", daemon.url("five.git"), "--depth", bad)
            assert refused.returncode == 2
            assert refused.stderr == (
                f"artifactfs: --depth must be a whole number from 1 to 1000000, not {bad!r}\n"
            )
        artifactfs.ok("add-repo", "deep", daemon.url("five.git"), "--depth", "2")
        assert artifactfs.status("deep")["depth"] == 2
        mnt = home / "mnt" / "deep"
        assert git(mnt, "log", "--format=%H") == "".join(f"{c}\n" for c in commits[:2])
        artifactfs.ok("add-repo", "shallow", daemon.url("five.git"))
        assert artifactfs.status("shallow")["depth"] == 1
        assert git(home / "mnt" / "shallow", "log", "--format=%H") == f"{commits[0]}\n"
