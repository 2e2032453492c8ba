"""Faults: an origin that dies and comes back, or no origin at all. With
``--offline`` (or ``HF_HUB_OFFLINE=1`` for the Hub) a branch shows the commit it last resolved
to in this home, nothing is sent, and bytes that are not stored fail at once with EIO and a
reason; a pinned commit whose snapshot is here mounts from local state without the flag too."""

from __future__ import annotations

import errno
import time
from pathlib import Path

from tests.conftest import BIG, hub_env
from tests.helpers.checklogs import ExpectLog
from tests.helpers.daemons import running_daemon
from tests.helpers.gitrepos import Repo
from tests.helpers.hub import HubServer
from tests.helpers.mounts import errno_of, mounted, run_cli
from tests.helpers.servers import GitDaemon


def test_git_offline_shows_the_last_commit_of_the_branch_and_fetches_nothing(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path, expect_log: ExpectLog
) -> None:
    expect_log(r"offline: not in the store, and nothing is fetched", level="ERROR", required=True)
    url = daemon.url("sample.git")
    with mounted(url, mnt, home, "--ref", "main"):
        assert (mnt / "data" / "big.bin").read_bytes() == BIG
    daemon.stop()  # no server at all: offline must not even try
    with mounted(url, mnt, home, "--ref", "main", "--offline") as mount:
        assert mount.xattr("commit") == sample.commit
        assert (mnt / "data" / "big.bin").read_bytes() == BIG
        started = time.monotonic()
        assert errno_of(lambda: (mnt / "README.md").read_bytes()) == errno.EIO
        assert time.monotonic() - started < 5  # at once, not after a timeout
        assert "connection refused" not in mount.log()  # nothing was sent


def test_git_offline_without_a_resolved_ref_fails_with_the_reason(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path, expect_log: ExpectLog
) -> None:
    expect_log(r"^cannot prepare \S+: offline, and dev of \S+ was never prepared", required=True)
    result = run_cli("mount", daemon.url("sample.git"), str(mnt), "--ref", "dev", "--offline",
                     home=home)  # fmt: skip
    assert result.returncode == 1
    assert "offline, and dev of" in result.stderr


def test_add_repo_offline_is_kept_by_the_daemon(
    daemon: GitDaemon, sample: Repo, home: Path, expect_log: ExpectLog
) -> None:
    expect_log(r"offline: not in the store, and nothing is fetched", level="ERROR", required=True)
    url = daemon.url("sample.git")
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "online", url, "--ref", "main")
        assert (home / "mnt" / "online" / "data" / "big.bin").read_bytes() == BIG
        artifactfs.ok("remove-repo", "online")
        daemon.stop()
        artifactfs.ok("add-repo", "cut", url, "--ref", "main", "--offline")
        status = artifactfs.status("cut")
        assert (status["state"], status["commit"], status["offline"]) == (
            "ready",
            sample.commit,
            True,
        )
        mnt = home / "mnt" / "cut"
        assert (mnt / "data" / "big.bin").read_bytes() == BIG
        assert errno_of(lambda: (mnt / "README.md").read_bytes()) == errno.EIO


def test_hub_offline_mounts_a_branch_from_local_state(
    hub: HubServer, tmp_path: Path, mnt: Path, home: Path, expect_log: ExpectLog
) -> None:
    expect_log(r"offline, and these bytes are not stored", level="ERROR", required=True)
    first = hub.create_repo("org/model", {"config.json": b"{}\n", "w.bin": b"\1" * 3_000_000})
    env = hub_env(hub, tmp_path)
    with mounted("hf://org/model", mnt, home, env=env):
        assert (mnt / "config.json").read_bytes() == b"{}\n"
    hub.commit("org/model", {"config.json": b"{moved}\n"})  # the branch moves on the Hub
    hub.requests.clear()
    with mounted("hf://org/model", mnt, home, env={**env, "HF_HUB_OFFLINE": "1"}) as mount:
        assert mount.xattr("commit") == first  # what this home last saw
        assert (mnt / "config.json").read_bytes() == b"{}\n"
        assert errno_of(lambda: (mnt / "w.bin").read_bytes()) == errno.EIO
    assert hub.requests == []  # nothing was sent


def test_an_origin_that_dies_and_comes_back(
    daemon: GitDaemon, sample: Repo, repos: Path, mnt: Path, home: Path, expect_log: ExpectLog
) -> None:
    """A read of bytes that are not stored while the origin is gone fails at once (EIO);
    nothing half-fetched is kept; once the origin is back on its address the same file reads
    right, with no restart. (A silent origin: tests/test_4_mount_gate.py.)"""
    expect_log(r"^(fetching \d+ blob\(s\) failed|read: read of \w+ failed): ", level="ERROR")
    url = daemon.url("sample.git")
    big = sample.blob_id("data/big.bin")
    with mounted(url, mnt, home) as mount:
        assert (mnt / "README.md").read_bytes() == b"# sample\n"
        daemon.stop()  # the origin dies
        started = time.monotonic()
        assert errno_of(lambda: (mnt / "data" / "big.bin").read_bytes()) == errno.EIO
        assert time.monotonic() - started < 20
        assert not (home / "cas" / "git-sha1" / big[:2] / big).exists()
        back = GitDaemon(repos, port=daemon.port)  # back, on the same address
        try:
            assert (mnt / "data" / "big.bin").read_bytes() == BIG
            assert mount.state() == "ready"
        finally:
            back.stop()
