"""``--require-commit``: a mount (or a daemon's repository) that shows one commit or nothing.
The mount becomes ready only if the ref resolves to the commit; otherwise the prepare fails
with one line naming what it resolved to, and a refresh to any other commit is refused."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.checklogs import ExpectLog
from tests.helpers.daemons import running_daemon
from tests.helpers.gitrepos import Repo, commit_files
from tests.helpers.mounts import mounted, run_cli
from tests.helpers.servers import GitDaemon

OTHER = "0123456789abcdef0123456789abcdef01234567"


def test_the_required_commit_mounts(daemon: GitDaemon, sample: Repo, mnt: Path, home: Path) -> None:
    url = daemon.url("sample.git")
    with mounted(url, mnt, home, "--require-commit", sample.commit.upper()) as mount:
        assert mount.xattr("commit") == sample.commit
        assert (mnt / "README.md").read_bytes() == b"# sample\n"


def test_another_commit_fails_the_prepare_with_what_it_resolved_to(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path, expect_log: ExpectLog
) -> None:
    url = daemon.url("sample.git")
    expected = (
        f"the default branch of {url} resolved to {sample.commit}, not the required commit {OTHER}"
    )
    expect_log(f"^cannot prepare {url}: {expected}$", level="ERROR", required=True)
    result = run_cli("mount", url, str(mnt), "--require-commit", OTHER, home=home)
    assert result.returncode == 1
    assert result.stderr.strip().endswith(expected), result.stderr


def test_an_abbreviated_commit_is_refused_as_bad_input(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    url = daemon.url("sample.git")
    for command in (
        ["mount", url, str(mnt)],
        ["add-repo", "short", url],  # refused by the CLI before any daemon is asked
    ):
        result = run_cli(*command, "--require-commit", sample.commit[:12], home=home)
        assert result.returncode == 2
        assert result.stderr == (
            "artifactfs: --require-commit needs a full commit id (40 or 64 hex digits):"
            f" {sample.commit[:12]!r}\n"
        )
    assert list(mnt.iterdir()) == []


def test_a_daemon_repository_keeps_its_required_commit_across_a_refresh(
    daemon: GitDaemon, sample: Repo, home: Path, expect_log: ExpectLog
) -> None:
    expect_log(r"resolved to [0-9a-f]{40}, not the required commit", level="ERROR")
    url = daemon.url("sample.git")
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "pinned", url, "--require-commit", sample.commit)
        status = artifactfs.status("pinned")
        assert (status["state"], status["require_commit"]) == ("ready", sample.commit)
        moved = commit_files(sample, {"README.md": b"# moved\n"}).commit
        refused = artifactfs.cli("refresh", "pinned")
        assert refused.returncode != 0
        assert f"resolved to {moved}, not the required commit {sample.commit}" in refused.stderr
        assert artifactfs.status("pinned")["commit"] == sample.commit
        assert (home / "mnt" / "pinned" / "README.md").read_bytes() == b"# sample\n"
