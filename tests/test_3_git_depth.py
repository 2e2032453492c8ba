"""``--depth N``: a writable git mount's git directory holds the commits and trees of the last
N commits (one ``blob:none`` fetch at attach) and a ``shallow`` file computed from that pack;
tested as test_3_git_worktree.py tests the git directory (a plain directory for the mount)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from artifactfs.sources import parse_source
from artifactfs.sources.git.git_dir import BASE_FILE, read_base
from artifactfs.sources.git.source import GitSource
from artifactfs.sources.git.spec import GitSourceSpec
from tests.helpers.gitrepos import Repo, commit_files, make_repo
from tests.helpers.servers import GitDaemon
from tests.helpers.sources import settings_for
from tests.test_3_git_worktree import Checkout, make_journal, prepared, user_git


def deep_source(
    url: str, tmp_path: Path, depth: int, offline: bool = False, ref: str | None = None
) -> GitSource:
    spec = parse_source(url)
    assert isinstance(spec, GitSourceSpec)
    settings = settings_for(tmp_path / "state", ref)
    return GitSource(spec, dataclasses.replace(settings, depth=depth, offline=offline))


@pytest.fixture
def five(repos: Path) -> tuple[Repo, list[str]]:
    """A repository of 5 commits; their ids, newest first."""
    repo = make_repo(repos, "five.git", {"a.txt": b"one\n"})
    commits = [repo.commit]
    for n in range(2, 6):
        repo = commit_files(repo, {"a.txt": b"v%d\n" % n, f"f{n}.txt": b"%d\n" % n}, f"c{n}")
        commits.append(repo.commit)
    return repo, commits[::-1]


def attach(source: GitSource, repo: Repo, tmp_path: Path, name: str = "mnt") -> Checkout:
    snapshot = prepared(source)
    work = Checkout(tmp_path / name, repo, snapshot.meta.commit)
    gitdir = tmp_path / "ws" / "git"
    db = tmp_path / "journal.db"
    if not db.exists():
        make_journal(db)
    work.show(source.worktree().attach(snapshot, gitdir, work.stat_of(snapshot), db))
    return work


def test_depth_3_holds_three_commits_and_their_trees(
    tmp_path: Path, daemon: GitDaemon, five: tuple[Repo, list[str]]
) -> None:
    repo, commits = five
    source = deep_source(daemon.url("five.git"), tmp_path, 3)
    work = attach(source, repo, tmp_path)
    gitdir = tmp_path / "ws" / "git"
    assert user_git(work.path, "log", "--format=%H") == "".join(f"{c}\n" for c in commits[:3])
    assert (gitdir / "shallow").read_text() == f"{commits[2]}\n"
    packs = sorted(p.name for p in (gitdir / "objects" / "pack").iterdir())
    assert [p.rsplit(".", 1)[1] for p in packs] == ["idx", "pack", "promisor"] * 2
    assert user_git(work.path, "status", "--porcelain=v2") == ""
    base = read_base(gitdir)
    assert base is not None and base.depth == 3
    # the trees are here: no fetch to list them; the blobs come when asked for
    fetches = daemon.fetch_commands()
    listed = user_git(work.path, "ls-tree", "-r", "--name-only", "HEAD~2")
    assert listed == "a.txt\nf2.txt\nf3.txt\n"
    assert daemon.fetch_commands() == fetches
    # a boundary commit shows as a root commit: every file added (blobs fetched lazily)
    assert user_git(work.path, "show", "HEAD~2", "--stat", "--format=%s") == (
        "c3\n\n a.txt  | 1 +\n f2.txt | 1 +\n f3.txt | 1 +\n 3 files changed, 3 insertions(+)\n"
    )
    assert user_git(work.path, "diff", "--stat", "HEAD~2", "HEAD") == (
        " a.txt  | 2 +-\n f4.txt | 1 +\n f5.txt | 1 +\n"
        " 3 files changed, 3 insertions(+), 1 deletion(-)\n"
    )


def test_default_depth_is_one_commit(
    tmp_path: Path, daemon: GitDaemon, five: tuple[Repo, list[str]]
) -> None:
    repo, commits = five
    source = deep_source(daemon.url("five.git"), tmp_path, 1)
    work = attach(source, repo, tmp_path)
    assert user_git(work.path, "log", "--format=%H") == f"{commits[0]}\n"
    assert (tmp_path / "ws" / "git" / "shallow").read_text() == f"{commits[0]}\n"
    assert '"depth"' not in (tmp_path / "ws" / "git" / BASE_FILE).read_text()


def test_more_depth_than_history_needs_no_shallow(
    tmp_path: Path, daemon: GitDaemon, five: tuple[Repo, list[str]]
) -> None:
    repo, commits = five
    work = attach(deep_source(daemon.url("five.git"), tmp_path, 50), repo, tmp_path)
    assert user_git(work.path, "log", "--format=%H") == "".join(f"{c}\n" for c in commits)
    assert not (tmp_path / "ws" / "git" / "shallow").exists()
    assert user_git(work.path, "rev-parse", "--is-shallow-repository") == "false\n"


def test_a_restart_with_more_depth_deepens_and_keeps_the_users_work(
    tmp_path: Path, daemon: GitDaemon, five: tuple[Repo, list[str]]
) -> None:
    repo, commits = five
    work = attach(deep_source(daemon.url("five.git"), tmp_path, 1), repo, tmp_path)
    user_git(work.path, "commit", "-q", "--allow-empty", "-m", "mine")
    mine = user_git(work.path, "rev-parse", "HEAD").strip()
    gitdir = tmp_path / "ws" / "git"

    # the same depth: nothing is fetched, nothing changes
    fetches = daemon.fetch_commands()
    attach(deep_source(daemon.url("five.git"), tmp_path, 1, ref=commits[0]), repo, tmp_path)
    assert daemon.fetch_commands() == fetches

    attach(deep_source(daemon.url("five.git"), tmp_path, 4, ref=commits[0]), repo, tmp_path)
    assert daemon.fetch_commands() == fetches + 1
    assert user_git(work.path, "rev-parse", "HEAD").strip() == mine
    log = user_git(work.path, "log", "--format=%H").split()
    assert log == [mine, *commits[:4]]
    assert (gitdir / "shallow").read_text() == f"{commits[3]}\n"
    base = read_base(gitdir)
    assert base is not None and base.depth == 4

    # less depth asked later: what is here stays, nothing is fetched
    fetches = daemon.fetch_commands()
    attach(deep_source(daemon.url("five.git"), tmp_path, 2, ref=commits[0]), repo, tmp_path)
    assert daemon.fetch_commands() == fetches
    assert len(user_git(work.path, "log", "--format=%H").split()) == 5


def test_offline_keeps_depth_one_with_a_warning_and_deepens_online(
    tmp_path: Path,
    daemon: GitDaemon,
    five: tuple[Repo, list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    repo, commits = five
    prepared(deep_source(daemon.url("five.git"), tmp_path, 1))  # prepared once online
    offline = deep_source(daemon.url("five.git"), tmp_path, 3, offline=True)
    work = attach(offline, repo, tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"the git directory of {commits[0]} keeps depth 1: cannot fetch 3 commits of history"
        " (offline: nothing is fetched)"
    ]
    gitdir = tmp_path / "ws" / "git"
    assert user_git(work.path, "log", "--format=%H") == f"{commits[0]}\n"
    base = read_base(gitdir)
    assert base is not None and base.depth == 1
    attach(deep_source(daemon.url("five.git"), tmp_path, 3), repo, tmp_path)
    assert user_git(work.path, "log", "--format=%H") == "".join(f"{c}\n" for c in commits[:3])
    assert (gitdir / "shallow").read_text() == f"{commits[2]}\n"


def test_a_new_commit_with_depth_fixes_the_boundary(
    tmp_path: Path, daemon: GitDaemon, five: tuple[Repo, list[str]]
) -> None:
    repo, commits = five
    work = attach(deep_source(daemon.url("five.git"), tmp_path, 2), repo, tmp_path)
    gitdir = tmp_path / "ws" / "git"
    assert (gitdir / "shallow").read_text() == f"{commits[1]}\n"
    updated = commit_files(repo, {"g.txt": b"g\n"}, "c6")
    moved = attach(deep_source(daemon.url("five.git"), tmp_path, 4), updated, tmp_path, "mnt2")
    # the old boundary's parent is here now: only the new pack's boundary is left
    assert (gitdir / "shallow").read_text() == f"{commits[2]}\n"
    log = user_git(moved.path, "log", "--format=%H").split()
    assert log == [updated.commit, *commits[:3]]
    assert user_git(moved.path, "status", "--porcelain=v2") == ""
    del work
