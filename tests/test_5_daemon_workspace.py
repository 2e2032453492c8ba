"""A daemon's git repository is a writable workspace: its status tells how many paths
changed, a refresh with changes is refused unless they are discarded, everything killed comes
back exactly as left, and ``remove-repo`` keeps the workspace unless ``--purge``."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.helpers.checklogs import ExpectLog
from tests.helpers.daemons import running_daemon, worker_pids
from tests.helpers.gitrepos import Repo, commit_files
from tests.helpers.servers import GitDaemon
from tests.helpers.waiting import wait_for


def git_status(tree: Path) -> str:
    return subprocess.run(
        ["git", "status", "--porcelain"], cwd=tree, capture_output=True, text=True, check=True
    ).stdout


def test_status_refresh_and_discard(daemon: GitDaemon, sample: Repo, home: Path) -> None:
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "work", daemon.url("sample.git"))
        mnt = home / "mnt" / "work"
        status = artifactfs.status("work")
        assert (status["writable"], status["changed"]) == (True, 0)
        (mnt / "README.md").write_bytes(b"# edited\n")
        (mnt / "notes.txt").write_bytes(b"mine\n")
        assert artifactfs.status("work")["changed"] == 2
        assert git_status(mnt) == " M README.md\n?? notes.txt\n"

        moved = commit_files(sample, {"README.md": b"# moved on\n"}).commit
        refused = artifactfs.cli("refresh", "work")
        assert refused.returncode == 2
        assert refused.stderr == (
            "artifactfs: the workspace has 2 changed paths;"
            " refresh --discard-changes throws them away\n"
        )
        assert (mnt / "README.md").read_bytes() == b"# edited\n"  # nothing was lost

        artifactfs.ok("refresh", "work", "--discard-changes")
        status = artifactfs.status("work")
        assert (status["commit"], status["changed"]) == (moved, 0)
        assert (mnt / "README.md").read_bytes() == b"# moved on\n"
        assert not (mnt / "notes.txt").exists()
        assert git_status(mnt) == ""
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=mnt, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        assert head == moved


def test_everything_killed_comes_back_as_left(
    daemon: GitDaemon, sample: Repo, home: Path, expect_log: ExpectLog
) -> None:
    expect_log(r"^work: worker ended; starting another in", level="WARNING")
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "work", daemon.url("sample.git"))
        mnt = home / "mnt" / "work"
        with open(mnt / "kept.txt", "wb") as out:
            out.write(b"fsynced\n")
            os.fsync(out.fileno())
        (mnt / "docs").mkdir()
        os.rename(mnt / "README.md", mnt / "docs" / "README.md")
        before = git_status(mnt)
        artifactfs.kill()
        for pid in worker_pids(home):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: worker_pids(home) == [], 10, "the worker to die")
        artifactfs.start()
        artifactfs.wait_state("work", "ready")
        assert (mnt / "kept.txt").read_bytes() == b"fsynced\n"
        assert (mnt / "docs" / "README.md").read_bytes() == b"# sample\n"
        assert not (mnt / "README.md").exists()
        assert git_status(mnt) == before
        assert artifactfs.status("work")["changed"] == 3


def test_remove_repo_keeps_the_workspace_unless_purged(
    daemon: GitDaemon, sample: Repo, home: Path
) -> None:
    url = daemon.url("sample.git")
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "work", url)
        (home / "mnt" / "work" / "mine.txt").write_bytes(b"kept\n")
        assert artifactfs.ok("remove-repo", "work") == ""
        assert (home / "repos" / "work" / "overlay.sqlite").exists()
        artifactfs.ok("add-repo", "work", url)  # the same name finds its changes again
        assert (home / "mnt" / "work" / "mine.txt").read_bytes() == b"kept\n"
        artifactfs.ok("remove-repo", "work", "--purge")
        assert not (home / "repos" / "work").exists()
        artifactfs.ok("add-repo", "work", url)
        assert not (home / "mnt" / "work" / "mine.txt").exists()
        assert artifactfs.status("work")["changed"] == 0


def test_read_only_and_hub_defaults(daemon: GitDaemon, sample: Repo, home: Path) -> None:
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "ro", daemon.url("sample.git"), "--read-only")
        status = artifactfs.status("ro")
        assert (status["writable"], "changed" in status) == (False, False)
        try:
            (home / "mnt" / "ro" / "x").write_bytes(b"")
        except OSError as exc:
            assert exc.errno == 30  # EROFS
        else:
            raise AssertionError("a read-only mount took a write")
        assert not (home / "mnt" / "ro" / ".git").exists()
