"""The git directory of a writable git mount (sources/git/worktree.py), with the real git CLI
against a real origin, without FUSE: a plain directory holding the commit's files (their mtimes
set to the commit time, as the mount shows them) stands in for the mount, and ``stat_of`` is
its ``lstat``."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from artifactfs.errors import SourceError
from artifactfs.overlay import journal
from artifactfs.snapshot import Row, SnapshotIndex
from artifactfs.sources import SourceSettings, parse_source
from artifactfs.sources.base import LowerStat, RootFile
from artifactfs.sources.git.git_dir import BASE_FILE, HOOK_FILE
from artifactfs.sources.git.remote import tip_pack_path
from artifactfs.sources.git.source import GitSource
from artifactfs.sources.git.spec import GitSourceSpec
from tests.helpers.checklogs import ExpectLog
from tests.helpers.gitrepos import (
    GIT_ENV,
    Executable,
    Repo,
    Submodule,
    Symlink,
    commit_files,
    make_repo,
)
from tests.helpers.servers import GitDaemon, HttpGitServer
from tests.helpers.sources import settings_for

FILES = {
    "README.md": b"# hello\n",
    "src/main.py": b"print('hi')\n" * 50,
    "src/util/deep.txt": b"deep\n",
    "bin/run.sh": Executable(b"#!/bin/sh\necho run\n"),
    "link": Symlink(b"src/main.py"),
    "empty.txt": b"",
    "vendor/sub": Submodule("0123456789abcdef0123456789abcdef01234567"),
    "name with spaces.txt": b"spaces\n",
}


def user_git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """The git CLI as a user runs it in the mount (no credentials, no system config)."""
    full = {**os.environ, **GIT_ENV, "GIT_TERMINAL_PROMPT": "0", **(env or {})}
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=full, capture_output=True, check=False, timeout=60
    )
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {result.stderr.decode()}")
    return result.stdout.decode()


def git_source(url: str, tmp_path: Path, ref: str | None = None) -> GitSource:
    spec = parse_source(url)
    assert isinstance(spec, GitSourceSpec)
    return GitSource(spec, settings_for(tmp_path / "state", ref))


def settings(tmp_path: Path) -> SourceSettings:
    return settings_for(tmp_path / "state")


class Checkout:
    """A directory with a commit's files, as a mount shows them: mtimes at the commit time."""

    def __init__(self, path: Path, repo: Repo, commit: str, when: int | None = None):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        tar = repo.archive(commit)
        tar.extractall(path, filter="tar")
        when = _commit_time(repo, commit) if when is None else when
        for root, dirs, files in os.walk(path):
            for name in files + dirs:
                os.utime(Path(root) / name, (when, when), follow_symlinks=False)

    def stat_of(self, snapshot: SnapshotIndex) -> Callable[[Row], LowerStat]:
        def stat(row: Row) -> LowerStat:
            found = os.lstat(self.path / os.fsdecode(snapshot.path_of(row.inode)))
            return LowerStat(
                found.st_ino,
                found.st_mode,
                found.st_size,
                found.st_mtime_ns,
                found.st_uid,
                found.st_gid,
            )

        return stat

    def show(self, root_file: RootFile) -> None:
        (self.path / os.fsdecode(root_file.name)).write_bytes(root_file.content)


def _commit_time(repo: Repo, commit: str) -> int:
    out = subprocess.run(
        ["git", "show", "-s", "--format=%ct", commit],
        cwd=repo.path,
        capture_output=True,
        check=True,
    )
    return int(out.stdout)


def prepared(source: GitSource) -> SnapshotIndex:
    (source.remote.settings.snapshots_dir).mkdir(parents=True, exist_ok=True)
    return SnapshotIndex(source.prepare().path)


def make_journal(path: Path) -> Path:
    """A journal as an overlay keeps it: the table, and its mirror for the hook."""
    connection = sqlite3.connect(path)
    with connection:
        journal.ensure(connection)
    journal.HookFiles(journal.hook_files_of(path)).rebuild(connection)
    connection.close()
    return path


def record(path: Path, *paths: bytes) -> None:
    connection = sqlite3.connect(path)
    with connection:
        journal.record(connection, paths)
    journal.HookFiles(journal.hook_files_of(path)).rebuild(connection)
    connection.close()


@pytest.fixture
def origin(repos: Path) -> Repo:
    return make_repo(repos, "origin.git", FILES)


def test_a_partial_clone_git_takes_as_a_clean_checkout(
    tmp_path: Path, daemon: GitDaemon, origin: Repo
) -> None:
    source = git_source(daemon.url("origin.git"), tmp_path)
    snapshot = prepared(source)
    assert tip_pack_path(tmp_path / "state", origin.commit).exists()  # kept by prepare
    fetches = daemon.fetch_commands()
    work = Checkout(tmp_path / "mnt", origin, origin.commit)
    gitdir = tmp_path / "ws" / "git"
    root_file = source.worktree().attach(
        snapshot, gitdir, work.stat_of(snapshot), make_journal(tmp_path / "journal.db")
    )
    assert root_file == RootFile(b".git", f"gitdir: {gitdir}\n".encode())
    assert daemon.fetch_commands() == fetches  # the kept pack: no round trip
    work.show(root_file)
    packs = sorted(p.suffix for p in (gitdir / "objects" / "pack").iterdir())
    assert packs == [".idx", ".pack", ".promisor"]
    assert (gitdir / "shallow").read_text() == f"{origin.commit}\n"
    config = user_git(work.path, "config", "--list", "--local").splitlines()
    for line in (
        "core.repositoryformatversion=1",
        "core.bare=false",
        "extensions.partialclone=origin",
        f"remote.origin.url={daemon.url('origin.git')}",
        "remote.origin.fetch=+refs/heads/*:refs/remotes/origin/*",
        "remote.origin.promisor=true",
        "remote.origin.partialclonefilter=blob:none",
        "core.fsmonitorhookversion=2",
        "core.untrackedcache=true",
        "branch.main.remote=origin",
        "branch.main.merge=refs/heads/main",
    ):
        assert line in config

    # clean, and nothing fetched to know it
    assert user_git(work.path, "status", "--porcelain=v2") == ""
    assert user_git(work.path, "rev-parse", "--show-toplevel").strip() == str(work.path)
    assert user_git(work.path, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    assert user_git(work.path, "rev-parse", "HEAD", "origin/main").split() == [origin.commit] * 2
    short = origin.commit[:7]
    assert user_git(work.path, "log", "--oneline").strip() == f"{short} initial"
    status = user_git(work.path, "status", "--branch", "--porcelain=v2")
    assert "# branch.upstream origin/main\n# branch.ab +0 -0\n" in status
    assert daemon.fetch_commands() == fetches
    index_time = (gitdir / "index").stat().st_mtime_ns
    assert all(
        (work.path / p).lstat().st_mtime_ns < index_time
        for p in ("README.md", "src/main.py", "link")
    )

    # git fetches a blob it lacks from the origin itself
    assert user_git(work.path, "cat-file", "-p", "HEAD:src/util/deep.txt") == "deep\n"
    assert daemon.fetch_commands() == fetches + 1


def test_edit_diff_commit_with_the_origin_down_and_restart(
    tmp_path: Path, repos: Path, daemon: GitDaemon, origin: Repo
) -> None:
    source = git_source(daemon.url("origin.git"), tmp_path)
    snapshot = prepared(source)
    work = Checkout(tmp_path / "mnt", origin, origin.commit)
    gitdir = tmp_path / "ws" / "git"
    stat_of = work.stat_of(snapshot)
    worktree = source.worktree()
    db = make_journal(tmp_path / "journal.db")
    work.show(worktree.attach(snapshot, gitdir, stat_of, db))
    readme = snapshot.lookup(1, b"README.md")
    assert readme is not None
    # a copy-up: the verified bytes as they were, then the edit
    original = tmp_path / "cas-copy"
    original.write_bytes((work.path / "README.md").read_bytes())
    worktree.keep_blob(readme, original)
    worktree.keep_blob(readme, original)  # again: already there, nothing happens
    loose = gitdir / "objects" / readme.oid[:2] / readme.oid[2:]  # type: ignore[index]
    assert loose.exists()
    (work.path / "README.md").write_bytes(b"# hello\nworld\n")
    record(db, b"README.md")
    daemon.stop()  # from here on the origin is down

    assert user_git(work.path, "status", "--porcelain=v1") == " M README.md\n"
    diff = user_git(work.path, "diff", "--no-color", "README.md")
    assert diff.endswith("@@ -1 +1,2 @@\n # hello\n+world\n")
    user_git(work.path, "add", "README.md")
    assert user_git(work.path, "status", "--porcelain=v1") == "M  README.md\n"

    # git commit in a partial clone first fetches every blob of the index it lacks (git's
    # rule: cache_tree_update prefetches them, in one batch): the CAS remote fetches those
    # not in the CAS from the origin, once, and leaves them in the CAS for the mount
    daemon = GitDaemon(repos, port=daemon.port)
    try:
        mark = daemon.trace_mark()
        user_git(work.path, "commit", "-q", "-m", "edit")
        assert daemon.fetch_commands(mark) == 1
        main_py = origin.blob_id("src/main.py")
        assert source.remote.cas.hash_published(source.remote.blob_digest(main_py)) == main_py
        user_git(work.path, "commit", "-q", "--allow-empty", "-m", "again")
        assert daemon.fetch_commands(mark) == 1  # nothing fetched twice
    finally:
        daemon.stop()
    assert user_git(work.path, "status", "--porcelain=v2") == ""
    mine = user_git(work.path, "rev-parse", "HEAD").strip()
    assert user_git(work.path, "log", "--format=%s").split() == ["again", "edit", "initial"]

    # a restart: the same commit, left exactly as the user left it
    before = (gitdir / "index").read_bytes()
    again = git_source(daemon.url("origin.git"), tmp_path, ref=origin.commit)  # no server
    work.show(again.worktree().attach(snapshot, gitdir, stat_of, db))
    assert user_git(work.path, "rev-parse", "HEAD").strip() == mine
    assert (gitdir / "index").read_bytes() == before
    assert user_git(work.path, "status", "--porcelain=v2") == ""


def test_a_new_commit_repoints_the_git_directory(
    tmp_path: Path, repos: Path, daemon: GitDaemon, origin: Repo
) -> None:
    source = git_source(daemon.url("origin.git"), tmp_path)
    first = prepared(source)
    work = Checkout(tmp_path / "mnt1", origin, origin.commit)
    gitdir = tmp_path / "ws" / "git"
    db = make_journal(tmp_path / "journal.db")
    work.show(source.worktree().attach(first, gitdir, work.stat_of(first), db))
    user_git(work.path, "checkout", "-q", "-b", "feature")
    user_git(work.path, "commit", "-q", "--allow-empty", "-m", "mine")
    feature = user_git(work.path, "rev-parse", "feature").strip()

    updated = commit_files(origin, {"new.txt": b"new\n"}, "second", remove=("empty.txt",))
    user_git(work.path, "fetch", "-q", "origin")  # the user's own fetch: blobless, shallow
    assert user_git(work.path, "log", "--format=%s", "origin/main") == "second\ninitial\n"
    assert user_git(work.path, "ls-files", "-s", "vendor/sub").startswith("160000 0123456789")
    source = git_source(daemon.url("origin.git"), tmp_path)
    second = prepared(source)
    assert second.meta.commit == updated.commit
    moved = Checkout(tmp_path / "mnt2", updated, updated.commit)
    root_file = source.worktree().attach(second, gitdir, moved.stat_of(second), db)
    moved.show(root_file)
    assert user_git(moved.path, "status", "--porcelain=v2") == ""
    assert user_git(moved.path, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    assert user_git(moved.path, "rev-parse", "HEAD", "origin/main").split() == [updated.commit] * 2
    assert user_git(moved.path, "rev-parse", "feature").strip() == feature  # kept
    assert user_git(moved.path, "log", "--format=%s").strip() == "second"  # shallow again
    shallow = (gitdir / "shallow").read_text().split()
    assert shallow == [origin.commit, updated.commit]
    assert f'"commit": "{updated.commit}"' in (gitdir / BASE_FILE).read_text()
    reflog = user_git(moved.path, "reflog", "show", "--format=%gs", "main").splitlines()
    assert reflog[0].startswith("artifactfs: refreshed from")


def test_fsmonitor_hook_reports_exactly_the_journal(
    tmp_path: Path, daemon: GitDaemon, origin: Repo
) -> None:
    source = git_source(daemon.url("origin.git"), tmp_path)
    snapshot = prepared(source)
    work = Checkout(tmp_path / "mnt", origin, origin.commit)
    gitdir = tmp_path / "work space $x" / "git"  # git runs the hook through the shell then
    db = make_journal(tmp_path / "journal.db")
    work.show(source.worktree().attach(snapshot, gitdir, work.stat_of(snapshot), db))
    assert os.access(gitdir / HOOK_FILE, os.X_OK)

    # the index says every entry is known clean by the fsmonitor (lowercase tags)
    listed = user_git(work.path, "ls-files", "-f").splitlines()
    assert "h README.md" in listed and "h src/main.py" in listed
    traced = subprocess.run(
        ["git", "status", "--porcelain=v2"],
        cwd=work.path,
        env={**os.environ, **GIT_ENV, "GIT_TRACE_FSMONITOR": "1"},
        capture_output=True,
        check=True,
    )
    assert traced.stdout == b""
    connection = sqlite3.connect(db)
    token = f"artifactfs:{journal.epoch_of(connection)}:0"  # the start of the journal
    connection.close()
    assert f"read fsmonitor extension successful '{token}'".encode() in traced.stderr
    assert re.search(
        rb"fsmonitor process .*/artifactfs-fsmonitor'* returned success", traced.stderr
    )

    # change a file behind git's back without telling the journal: the hook is believed
    (work.path / "src" / "main.py").write_bytes(b"changed\n")
    (work.path / "untracked.txt").write_bytes(b"new\n")
    assert user_git(work.path, "status", "--porcelain=v1") == ""  # nobody told it
    record(db, b"src/main.py", b"untracked.txt")
    assert user_git(work.path, "status", "--porcelain=v1") == " M src/main.py\n?? untracked.txt\n"


def test_a_pack_not_kept_is_fetched_once(tmp_path: Path, daemon: GitDaemon, origin: Repo) -> None:
    source = git_source(daemon.url("origin.git"), tmp_path)
    snapshot = prepared(source)
    kept = tip_pack_path(tmp_path / "state", origin.commit)
    kept.unlink()  # a snapshot from before packs were kept
    fetches = daemon.fetch_commands()
    work = Checkout(tmp_path / "mnt", origin, origin.commit)
    gitdir = tmp_path / "git"
    work.show(
        source.worktree().attach(snapshot, gitdir, work.stat_of(snapshot), tmp_path / "none.db")
    )
    assert daemon.fetch_commands() == fetches + 1
    assert kept.exists()
    assert user_git(work.path, "status", "--porcelain=v2") == ""  # no journal: a full stat scan


def test_a_tag_gives_a_detached_head_and_credentials_stay_out(
    tmp_path: Path, daemon: GitDaemon, origin: Repo
) -> None:
    subprocess.run(["git", "tag", "v1"], cwd=origin.path, check=True)
    source = git_source(daemon.url("origin.git"), tmp_path, ref="v1")
    snapshot = prepared(source)
    work = Checkout(tmp_path / "mnt", origin, origin.commit)
    work.show(
        source.worktree().attach(
            snapshot, tmp_path / "git", work.stat_of(snapshot), tmp_path / "j.db"
        )
    )
    head = (tmp_path / "git" / "HEAD").read_text()
    assert head == f"{origin.commit}\n"
    assert user_git(work.path, "status", "--porcelain=v2") == ""


def test_attach_fails_with_one_line_when_the_pack_cannot_be_had(
    tmp_path: Path, daemon: GitDaemon, origin: Repo
) -> None:
    source = git_source(daemon.url("origin.git"), tmp_path)
    snapshot = prepared(source)
    tip_pack_path(tmp_path / "state", origin.commit).unlink()
    daemon.stop()
    with pytest.raises(SourceError) as failure:
        source.worktree().attach(snapshot, tmp_path / "git", lambda row: _nothing(), tmp_path)
    assert "\n" not in str(failure.value)
    assert not (tmp_path / "git").exists()


def _nothing() -> LowerStat:
    raise AssertionError("not reached")


def test_keep_blob_never_raises(
    tmp_path: Path, daemon: GitDaemon, origin: Repo, expect_log: ExpectLog
) -> None:
    source = git_source(daemon.url("origin.git"), tmp_path)
    snapshot = prepared(source)
    work = Checkout(tmp_path / "mnt", origin, origin.commit)
    worktree = source.worktree()
    worktree.attach(snapshot, tmp_path / "git", work.stat_of(snapshot), tmp_path / "j.db")
    readme = snapshot.lookup(1, b"README.md")
    assert readme is not None
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"not the blob\n")
    expect_log(r"could not keep blob", level="WARNING")
    worktree.keep_blob(readme, wrong)
    worktree.keep_blob(readme, tmp_path / "missing")
    oid = readme.oid or ""
    assert not (tmp_path / "git" / "objects" / oid[:2] / oid[2:]).exists()
    assert not list((tmp_path / "git" / "objects" / oid[:2]).iterdir())  # no temporary left


def test_a_sha256_repository(tmp_path: Path, repos: Path, daemon: GitDaemon) -> None:
    files = {path: content for path, content in FILES.items() if path != "vendor/sub"}
    origin = make_repo(repos, "sha256.git", files, object_format="sha256")
    source = git_source(daemon.url("sha256.git"), tmp_path)
    snapshot = prepared(source)
    work = Checkout(tmp_path / "mnt", origin, origin.commit)
    db = make_journal(tmp_path / "journal.db")
    work.show(source.worktree().attach(snapshot, tmp_path / "git", work.stat_of(snapshot), db))
    assert user_git(work.path, "status", "--porcelain=v2") == ""
    assert user_git(work.path, "rev-parse", "HEAD").strip() == origin.commit
    assert user_git(work.path, "cat-file", "-p", "HEAD:src/util/deep.txt") == "deep\n"


def test_a_git_directory_we_did_not_record_is_kept_aside(
    tmp_path: Path, daemon: GitDaemon, origin: Repo, expect_log: ExpectLog
) -> None:
    source = git_source(daemon.url("origin.git"), tmp_path)
    snapshot = prepared(source)
    work = Checkout(tmp_path / "mnt", origin, origin.commit)
    gitdir = tmp_path / "ws" / "git"
    gitdir.mkdir(parents=True)
    (gitdir / "HEAD").write_text("ref: refs/heads/mine\n")  # somebody's, with no base file
    (tmp_path / "ws" / ".git.tmp-dead").mkdir()  # what a crashed attach left
    expect_log(r"had no record of its commit: moved it to", level="WARNING")
    work.show(source.worktree().attach(snapshot, gitdir, work.stat_of(snapshot), tmp_path / "j"))
    assert user_git(work.path, "status", "--porcelain=v2") == ""
    left = sorted(p.name for p in (tmp_path / "ws").iterdir())
    assert left[0].startswith(".git.old-") and left[1:] == ["git"]
    assert (tmp_path / "ws" / left[0] / "HEAD").read_text() == "ref: refs/heads/mine\n"


def test_no_entry_is_racily_clean_even_from_a_commit_in_the_future(
    tmp_path: Path, daemon: GitDaemon, origin: Repo
) -> None:
    source = git_source(daemon.url("origin.git"), tmp_path)
    snapshot = prepared(source)
    ahead = int(time.time()) + 3600  # files dated an hour ahead of the clock
    work = Checkout(tmp_path / "mnt", origin, origin.commit, when=ahead)
    gitdir = tmp_path / "git"
    work.show(source.worktree().attach(snapshot, gitdir, work.stat_of(snapshot), tmp_path / "j"))
    assert (gitdir / "index").stat().st_mtime_ns > ahead * 10**9
    # same size, same mtime, same inode, other bytes: only a read of the content would tell,
    # and git reads (on a mount: fetches) the content of racily clean entries only
    readme = work.path / "README.md"
    before = readme.stat()
    with open(readme, "r+b") as out:
        out.write(b"# HELLO\n")
    os.utime(readme, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert user_git(work.path, "status", "--porcelain=v2") == ""  # no journal: stat checks


def test_credentials_follow_git_rules_and_are_never_written(
    tmp_path: Path, repos: Path, origin: Repo
) -> None:
    server = HttpGitServer(repos, token="s3cret-token")
    try:
        host = server.url("origin.git").removeprefix("http://")
        source = git_source(f"http://x-access-token:s3cret-token@{host}", tmp_path)
        snapshot = prepared(source)
        work = Checkout(tmp_path / "mnt", origin, origin.commit)
        gitdir = tmp_path / "git"
        db = make_journal(tmp_path / "journal.db")
        work.show(source.worktree().attach(snapshot, gitdir, work.stat_of(snapshot), db))
        for path in gitdir.rglob("*"):
            if path.is_file():
                assert b"s3cret" not in path.read_bytes(), path
        url = user_git(work.path, "config", "remote.origin.url").strip()
        assert url == f"http://{host}"
        assert user_git(work.path, "status", "--porcelain=v2") == ""
        helper = "!f() { echo username=x-access-token; echo password=s3cret-token; }; f"
        with_helper = {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "credential.helper",
            "GIT_CONFIG_VALUE_0": helper,
        }
        shown = user_git(work.path, "cat-file", "-p", "HEAD:README.md", env=with_helper)
        assert shown == "# hello\n"
    finally:
        server.stop()


def test_the_everyday_commands(tmp_path: Path, daemon: GitDaemon, origin: Repo) -> None:
    source = git_source(daemon.url("origin.git"), tmp_path)
    snapshot = prepared(source)
    work = Checkout(tmp_path / "mnt", origin, origin.commit)
    db = make_journal(tmp_path / "journal.db")
    work.show(source.worktree().attach(snapshot, tmp_path / "git", work.stat_of(snapshot), db))
    main_py = work.path / "src" / "main.py"

    main_py.write_bytes(b"edited\n")
    (work.path / "README.md").unlink()
    record(db, b"src/main.py", b"README.md")
    assert user_git(work.path, "status", "--porcelain=v1") == " D README.md\n M src/main.py\n"
    user_git(work.path, "restore", "README.md")
    assert (work.path / "README.md").read_bytes() == b"# hello\n"
    record(db, b"README.md")
    user_git(work.path, "stash", "-q")
    record(db, b"src/main.py")
    assert user_git(work.path, "status", "--porcelain=v1") == ""
    assert main_py.read_bytes() == b"print('hi')\n" * 50
    user_git(work.path, "stash", "pop", "-q")
    record(db, b"src/main.py")
    assert main_py.read_bytes() == b"edited\n"
    user_git(work.path, "checkout", "-q", "-b", "topic")
    user_git(work.path, "commit", "-q", "-am", "topic work")
    assert user_git(work.path, "show", "--format=%s", "--stat", "HEAD").startswith("topic work\n")
    blame = user_git(work.path, "blame", "--porcelain", "src/main.py")
    assert "summary topic work" in blame
    user_git(work.path, "reset", "-q", "--hard", "main")
    record(db, b"src/main.py")
    assert main_py.read_bytes() == b"print('hi')\n" * 50
    assert user_git(work.path, "status", "--porcelain=v1") == ""
    assert user_git(work.path, "log", "-1", "--format=%s", "ORIG_HEAD") == "topic work\n"


def test_a_damaged_kept_pack_is_fetched_again(
    tmp_path: Path, daemon: GitDaemon, origin: Repo, expect_log: ExpectLog
) -> None:
    source = git_source(daemon.url("origin.git"), tmp_path)
    snapshot = prepared(source)
    kept = tip_pack_path(tmp_path / "state", origin.commit)
    data = bytearray(kept.read_bytes())
    data[len(data) // 2] ^= 0xFF
    kept.chmod(0o644)
    kept.write_bytes(bytes(data))
    fetches = daemon.fetch_commands()
    expect_log(r"the pack kept for \w+ is damaged", level="WARNING")
    work = Checkout(tmp_path / "mnt", origin, origin.commit)
    gitdir = tmp_path / "git"
    work.show(source.worktree().attach(snapshot, gitdir, work.stat_of(snapshot), tmp_path / "j"))
    assert daemon.fetch_commands() == fetches + 1
    assert user_git(work.path, "status", "--porcelain=v2") == ""
    assert user_git(work.path, "fsck", "--no-progress") == ""  # every object, hashed


def test_git_takes_blobs_from_the_cas_and_leaves_the_ones_it_fetches_there(
    tmp_path: Path, repos: Path, daemon: GitDaemon, origin: Repo
) -> None:
    source = git_source(daemon.url("origin.git"), tmp_path)
    snapshot = prepared(source)
    work = Checkout(tmp_path / "mnt", origin, origin.commit)
    db = make_journal(tmp_path / "journal.db")
    work.show(source.worktree().attach(snapshot, tmp_path / "git", work.stat_of(snapshot), db))
    cas = source.remote.cas

    # what git fetches lazily lands in the CAS too (a read through the mount fetches nothing)
    deep = origin.blob_id("src/util/deep.txt")
    assert user_git(work.path, "cat-file", "-p", f"{deep}") == "deep\n"
    assert cas.hash_published(source.remote.blob_digest(deep)) == deep

    # what the mount fetched (a grep -r: every blob), git takes from the CAS: even the
    # prefetch of git commit works with the origin down
    wanted = {origin.blob_id(path): None for path in ("README.md", "src/main.py", "bin/run.sh")}
    wanted |= {origin.blob_id(path): None for path in ("empty.txt", "name with spaces.txt")}
    source.remote.fetch_blobs(wanted)
    daemon.stop()
    (work.path / "README.md").write_bytes(b"# hello\nworld\n")
    record(db, b"README.md")
    assert user_git(work.path, "diff", "--stat").strip().startswith("README.md | 1 +")
    user_git(work.path, "commit", "-q", "-am", "offline commit")
    assert user_git(work.path, "status", "--porcelain=v2") == ""
    assert user_git(work.path, "log", "--format=%s").split() == ["offline", "commit", "initial"]


def test_a_blob_neither_in_the_cas_nor_at_the_origin_fails_without_hanging(
    tmp_path: Path, daemon: GitDaemon, origin: Repo
) -> None:
    source = git_source(daemon.url("origin.git"), tmp_path)
    snapshot = prepared(source)
    work = Checkout(tmp_path / "mnt", origin, origin.commit)
    work.show(
        source.worktree().attach(snapshot, tmp_path / "git", work.stat_of(snapshot), tmp_path / "j")
    )
    daemon.stop()
    result = subprocess.run(
        ["git", "cat-file", "-p", "HEAD:README.md"],
        cwd=work.path,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert b"remote error: artifactfs: " in result.stderr  # the CAS remote, then origin
    assert b"could not fetch" in result.stderr


def test_the_cas_remote_streams_large_blobs_and_never_passes_on_a_damaged_one(
    tmp_path: Path, repos: Path, daemon: GitDaemon
) -> None:
    big = os.urandom(3 << 20) + b"end"
    origin = make_repo(repos, "big.git", {"big.bin": big, "README.md": b"# hello\n"})
    source = git_source(daemon.url("big.git"), tmp_path)
    snapshot = prepared(source)
    work = Checkout(tmp_path / "mnt", origin, origin.commit)
    work.show(
        source.worktree().attach(snapshot, tmp_path / "git", work.stat_of(snapshot), tmp_path / "j")
    )
    big_id, readme_id = origin.blob_id("big.bin"), origin.blob_id("README.md")
    source.remote.fetch_blobs({big_id: len(big), readme_id: 8})
    stored = source.remote.cas.path_of(source.remote.blob_digest(readme_id))
    stored.chmod(0o644)
    stored.write_bytes(b"# HELLO\n")  # damaged in the store, same size
    mark = daemon.trace_mark()
    # the damaged copy is never sent: the CAS remote fetches the blob again (healing the store)
    assert user_git(work.path, "cat-file", "-p", "HEAD:README.md") == "# hello\n"
    assert daemon.fetch_commands(mark) == 1
    assert stored.read_bytes() == b"# hello\n"
    daemon.stop()
    shown = subprocess.run(
        ["git", "cat-file", "-p", "HEAD:big.bin"], cwd=work.path, capture_output=True, check=True
    )
    assert shown.stdout == big  # from the CAS, with the origin down
