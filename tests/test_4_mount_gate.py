"""The ready gate through the kernel: blocked while preparing, EIO at once when failed."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers.checklogs import ExpectLog
from tests.helpers.gitrepos import Repo
from tests.helpers.mounts import blocked_in_fuse, errno_of, is_mounted, mounted, run_cli
from tests.helpers.ports import free_port
from tests.helpers.servers import GitDaemon, GitProxy
from tests.helpers.waiting import wait_for


def test_operations_wait_while_preparing_and_stat_does_not(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    proxy = GitProxy(daemon.port, held=True)
    try:
        with mounted(daemon.url("sample.git", proxy.port), mnt, home, ready=False) as mount:
            wait_for(lambda: proxy.accepted >= 1, 10, "prepare to reach the stalled server")
            assert os.stat(mnt).st_ino == 1  # returns while the server stalls
            assert mount.state() == "preparing"
            assert subprocess.run(["mountpoint", "-q", str(mnt)], timeout=10).returncode == 0

            ls = subprocess.Popen(
                ["ls", str(mnt)],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "LC_ALL": "C"},
            )
            try:
                wait_for(lambda: blocked_in_fuse(ls.pid), 10, "ls to block in the mount")
                assert ls.poll() is None
                proxy.release()
                out, _ = ls.communicate(timeout=20)
            finally:
                if ls.poll() is None:
                    ls.kill()
            assert ls.returncode == 0
            assert out.split("\n")[:3] == ["README.md", "bin", "data"]
            assert mount.state() == "ready"
    finally:
        proxy.stop()


def test_server_down_gives_eio_at_once_and_the_reason(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path, expect_log: ExpectLog
) -> None:
    closed = free_port()
    expect_log(r"^cannot prepare \S+: connection refused$", level="ERROR", required=True)
    with mounted(
        daemon.url("sample.git", closed), mnt, home, "--keep-failed", ready=False
    ) as mount:
        wait_for(lambda: mount.state() == "failed", 20, "prepare to fail")
        assert mount.xattr("error") == "connection refused"
        result = subprocess.run(["ls", str(mnt)], capture_output=True, text=True, timeout=10)
        assert result.returncode != 0
        assert "Input/output error" in result.stderr
        assert errno_of(lambda: os.listdir(mnt / "README.md")) == errno.EIO
        assert "connection refused" in mount.log()
        report = run_cli("status", str(mnt), "--json", home=home)
        assert '"state": "failed"' in report.stdout


def test_retry_after_failure_with_sighup(
    sample: Repo, repos: Path, mnt: Path, home: Path, expect_log: ExpectLog
) -> None:
    port = free_port()  # nothing listens here until the test starts a daemon
    expect_log(r"^cannot prepare \S+: connection refused$", level="ERROR", required=True)
    with mounted(
        f"git://127.0.0.1:{port}/sample.git", mnt, home, "--keep-failed", ready=False
    ) as mount:
        wait_for(lambda: mount.state() == "failed", 20, "prepare to fail")
        server = GitDaemon(repos, port=port)
        try:
            mount.process.send_signal(signal.SIGHUP)
            mount.wait_ready()
            assert (mnt / "README.md").read_bytes() == b"# sample\n"
        finally:
            server.stop()


def test_failed_prepare_exits_with_one_line_and_unmounts(
    sample: Repo, mnt: Path, home: Path, expect_log: ExpectLog
) -> None:
    url = f"git://127.0.0.1:{free_port()}/sample.git"
    expect_log(r"^cannot prepare \S+: connection refused$", level="ERROR", required=True)
    result = run_cli("mount", url, str(mnt), home=home)
    assert result.returncode == 1
    assert result.stderr == f"artifactfs: cannot prepare {url}: connection refused\n"
    assert not is_mounted(mnt)


def test_sigterm_while_the_server_stalls_exits_cleanly(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    proxy = GitProxy(daemon.port, held=True)
    try:
        with mounted(daemon.url("sample.git", proxy.port), mnt, home, ready=False) as mount:
            wait_for(lambda: proxy.accepted >= 1, 10, "prepare to reach the stalled server")
            mount.process.send_signal(signal.SIGTERM)
            assert mount.process.wait(10) == 0
            assert not is_mounted(mnt)
    finally:
        proxy.stop()


def test_a_read_from_a_silent_server_fails_with_eio_instead_of_hanging(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path, expect_log: ExpectLog
) -> None:
    # "fetching 1 blob(s) failed: ..." and "read of OID failed: blob OID: ..."
    expect_log(r"failed: (blob \w+: )?timed out waiting for the server$", level="ERROR")
    proxy = GitProxy(daemon.port)
    try:
        url = daemon.url("sample.git", proxy.port)
        with mounted(url, mnt, home, "--io-timeout", "1") as mount:
            proxy.hold()
            assert errno_of(lambda: (mnt / "data" / "big.bin").read_bytes()) == errno.EIO
            assert "timed out waiting for the server" in mount.log()
            proxy.release()
            assert (mnt / "README.md").read_bytes() == b"# sample\n"  # later reads recover
    finally:
        proxy.stop()


@pytest.mark.parametrize("stop", ["SIGTERM", "fusermount"])
def test_stopping_with_a_reader_waiting_on_the_gate(
    stop: str, daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    """Neither the stalled origin nor the blocked reader may hold the exit (io-timeout: 60 s)."""
    proxy = GitProxy(daemon.port, held=True)
    try:
        with mounted(daemon.url("sample.git", proxy.port), mnt, home, ready=False) as mount:
            wait_for(lambda: proxy.accepted >= 1, 10, "prepare to reach the stalled server")
            ls = subprocess.Popen(["ls", str(mnt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                wait_for(lambda: blocked_in_fuse(ls.pid), 10, "ls to block in the mount")
                if stop == "SIGTERM":
                    mount.process.send_signal(signal.SIGTERM)
                else:
                    # busy (the reader is inside), so only a lazy unmount can take it away
                    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=True, timeout=10)
                assert mount.process.wait(15) == 0, mount.stderr()
                assert ls.wait(10) != 0
            finally:
                if ls.poll() is None:
                    ls.kill()
                ls.communicate()
            assert not is_mounted(mnt)
    finally:
        proxy.stop()
