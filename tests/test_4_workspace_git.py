"""The real git CLI in a writable mount, compared with a real ``git clone`` of the same commit
given the same edits: what ``git status`` reports, what ``diff``/``commit``/``stash``/
``checkout -b``/``reset --hard`` do, and that ``git status`` looks only at what changed (its
file system calls counted with strace: O(changed), not O(files))."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.gitrepos import Repo, make_repo
from tests.helpers.mounts import mounted
from tests.helpers.servers import GitDaemon

IDENTITY = ["-c", "user.name=Agent", "-c", "user.email=agent@example.com"]
ENV = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "LC_ALL": "C"}


def git(tree: Path, *args: str) -> str:
    result = subprocess.run(["git", *IDENTITY, *args], cwd=tree, env=ENV, capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout


def porcelain(tree: Path) -> str:
    """``git status --porcelain=v2`` without the object ids of the work tree side (a clone
    and a mount agree on everything else: modes, index ids, rename scores)."""
    return git(tree, "status", "--porcelain=v2", "--untracked-files=all")


def same_edits(tree: Path) -> None:
    """An edit, an untracked file, a deletion, a rename (staged), and a new directory."""
    with open(tree / "src" / "app.py", "a") as out:
        out.write("print('edited')\n")
    (tree / "notes.txt").write_text("mine\n")
    (tree / "docs" / "old.md").unlink()
    git(tree, "mv", "docs/guide.md", "docs/manual.md")
    (tree / "build" / "out").mkdir(parents=True)
    (tree / "build" / "out" / "cache.bin").write_bytes(b"\0" * 100)


@pytest.fixture
def project(repos: Path) -> Repo:
    files: dict[str, bytes | object] = {
        "README.md": b"# project\n",
        "src/app.py": b"print('app')\n",
        "src/util.py": b"def f():\n    return 1\n",
        "docs/guide.md": b"guide\n",
        "docs/old.md": b"old\n",
    }
    for index in range(40):
        files[f"pkg{index % 8}/mod{index}.py"] = f"value = {index}\n".encode()
    return make_repo(repos, "project.git", files)  # type: ignore[arg-type]


def test_status_and_diff_match_a_real_clone(
    daemon: GitDaemon, project: Repo, mnt: Path, home: Path, tmp_path: Path
) -> None:
    url = daemon.url("project.git")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", url, str(clone)], env=ENV, check=True)
    with mounted(url, mnt, home):
        assert porcelain(mnt) == porcelain(clone) == ""
        for tree in (mnt, clone):
            same_edits(tree)
        assert porcelain(mnt) == porcelain(clone)
        assert git(mnt, "diff") == git(clone, "diff")
        assert git(mnt, "diff", "--cached") == git(clone, "diff", "--cached")


def test_commit_stash_branch_and_reset(
    daemon: GitDaemon, project: Repo, mnt: Path, home: Path
) -> None:
    with mounted(daemon.url("project.git"), mnt, home):
        same_edits(mnt)
        git(mnt, "add", "-A")
        git(mnt, "commit", "-q", "-m", "agent work")
        assert porcelain(mnt) == ""
        assert git(mnt, "log", "--format=%s").splitlines() == ["agent work", "initial"]
        assert git(mnt, "show", "--stat", "--format=", "HEAD").count("|") == 5

        git(mnt, "checkout", "-q", "-b", "feature")
        (mnt / "README.md").write_text("# feature\n")
        git(mnt, "stash", "-q")
        assert (mnt / "README.md").read_text() == "# project\n" and porcelain(mnt) == ""
        git(mnt, "stash", "pop", "-q")
        assert (mnt / "README.md").read_text() == "# feature\n"

        git(mnt, "reset", "-q", "--hard", "HEAD~1")
        assert porcelain(mnt) == ""
        assert (mnt / "docs" / "old.md").read_text() == "old\n"
        assert not (mnt / "notes.txt").exists() and not (mnt / "docs" / "manual.md").exists()
        assert git(mnt, "blame", "--porcelain", "src/util.py").count("\tdef f():") == 1


_STAT_CALL = re.compile(
    r'^\d+\s+(?:newfstatat|lstat|stat|statx|openat|open)\((?:AT_FDCWD|-?\d+), "([^"]*)"'
)


def worktree_calls(tree: Path, trace: Path) -> list[str]:
    """The stat and open calls ``git status`` made on paths of the work tree (not .git)."""
    subprocess.run(
        ["strace", "-f", "-qq", "-o", str(trace),
         "-e", "trace=stat,lstat,newfstatat,statx,open,openat", "git", "status", "--porcelain"],
        cwd=tree, env=ENV, check=True, capture_output=True,
    )  # fmt: skip
    found = []
    for line in trace.read_text().splitlines():
        match = _STAT_CALL.match(line)
        if match is None:
            continue
        path = match[1]
        inside = not path.startswith("/") or path.startswith(str(tree) + "/")
        relative = path.removeprefix(str(tree) + "/")
        if inside and relative and not relative.startswith((".git", "/")):
            found.append(relative)
    return found


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_git_status_looks_only_at_what_changed(
    daemon: GitDaemon, project: Repo, mnt: Path, home: Path, tmp_path: Path
) -> None:
    url = daemon.url("project.git")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", url, str(clone)], env=ENV, check=True)
    with mounted(url, mnt, home):
        for tree in (mnt, clone):
            git(tree, "status")  # the first run writes git's untracked cache
            for name in ("src/app.py", "pkg3/mod11.py"):
                with open(tree / name, "a") as out:
                    out.write("# edit\n")
        ours = worktree_calls(mnt, tmp_path / "mount.trace")
        theirs = worktree_calls(clone, tmp_path / "clone.trace")
    files = 45
    assert len([p for p in theirs if p.endswith(".py") or p.endswith(".md")]) >= files
    touched = {p for p in ours if p.endswith((".py", ".md"))}
    assert touched == {"src/app.py", "pkg3/mod11.py"}, sorted(set(ours))
    assert len(ours) <= 20, ours
    print(f"git status: {len(ours)} calls on the mount's paths, {len(theirs)} in a clone")


def test_writes_through_a_file_kept_open_reach_git_status(
    daemon: GitDaemon, project: Repo, mnt: Path, home: Path
) -> None:
    """An editor keeps its file open across ``git add``: what it writes after is still seen
    (the journal hears of a handle's writes again once fsmonitor tokens moved past them)."""
    with mounted(daemon.url("project.git"), mnt, home):
        assert porcelain(mnt) == ""
        fd = os.open(mnt / "README.md", os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"first\n")
            past = os.stat(mnt / "README.md").st_mtime - 10  # not "racily clean" to git
            os.utime(mnt / "README.md", (past, past))
            for index in range(70):  # past one segment of the journal's mirror
                (mnt / f"scratch{index}.txt").write_bytes(b"x")
            git(mnt, "add", "README.md")
            assert git(mnt, "status", "--porcelain", "README.md") == "M  README.md\n"
            os.write(fd, b"second\n")
            assert git(mnt, "status", "--porcelain", "README.md") == "MM README.md\n"
        finally:
            os.close(fd)
        assert (mnt / "README.md").read_bytes() == b"# project\nfirst\nsecond\n"
