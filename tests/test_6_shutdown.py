"""Stopping never hangs: SIGTERM to the daemon unmounts everything within its bound, even with
a worker stuck on an origin that accepts connections and never answers, and even with a worker
that cannot run at all (SIGSTOP: only the last resort, aborting its FUSE connection, helps).

The bound is a correctness property here (``docker stop`` sends SIGKILL 10 s after SIGTERM),
not a speed measurement: each test waits for the daemon's exit with that deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from artifactfs.daemon.supervisor import STOP_BOUND
from tests.helpers.checklogs import ExpectLog
from tests.helpers.daemons import Daemon, running_daemon, worker_pids
from tests.helpers.gitrepos import Repo
from tests.helpers.mounts import blocked_in_fuse, is_mounted
from tests.helpers.servers import GitDaemon, GitProxy
from tests.helpers.waiting import wait_for

DEADLINE = STOP_BOUND + 2.0
"""The daemon's bound, and a little for its own exit after the last worker."""


@contextmanager
def reader(*command: str) -> Iterator[subprocess.Popen[bytes]]:
    """A process reading the mount; killed however the test ends."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        with suppress(ProcessLookupError):
            process.kill()
        with suppress(subprocess.TimeoutExpired):
            process.wait(10)
        assert process.stderr is not None
        process.stderr.close()


def failed_with(process: subprocess.Popen[bytes], timeout: float = 10) -> str:
    """Wait for a reader that must fail now; its error message."""
    assert process.wait(timeout) != 0
    assert process.stderr is not None
    return process.stderr.read().decode(errors="replace")


def stop_daemon(daemon: Daemon) -> float:
    """SIGTERM the daemon; the seconds until it exited (fails past the deadline)."""
    assert daemon.process is not None
    started = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    try:
        daemon.process.wait(DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the daemon did not exit within {DEADLINE:.0f} s of SIGTERM")
    return time.monotonic() - started


def assert_nothing_left(home: Path, mountpoint: Path) -> None:
    assert not is_mounted(mountpoint)
    assert worker_pids(home) == []
    with open("/proc/self/mountinfo") as table:
        assert [line for line in table if str(home) in line] == []


def test_sigterm_with_a_worker_stuck_preparing_on_a_silent_origin(
    sample: Repo, daemon: GitDaemon, home: Path
) -> None:
    proxy = GitProxy(daemon.port, held=True)  # accepts, never answers
    try:
        with running_daemon(home) as artifactfs:
            url = f"git://127.0.0.1:{proxy.port}/sample.git"
            artifactfs.ok("add-repo", "stuck", url, "--async")
            mountpoint = Path(artifactfs.status("stuck")["mount"])
            wait_for(lambda: proxy.accepted >= 1, 20, "the worker to connect")
            assert artifactfs.status("stuck")["state"] == "preparing"
            with reader("ls", str(mountpoint)) as ls:
                wait_for(lambda: blocked_in_fuse(ls.pid), 20, "ls to wait on the gate")
                took = stop_daemon(artifactfs)
                failed_with(ls)  # failed, not left waiting
            assert artifactfs.process is not None and artifactfs.process.returncode == 0
            assert took < DEADLINE
            assert_nothing_left(home, mountpoint)
    finally:
        proxy.stop()


def test_sigterm_with_a_read_stuck_on_a_silent_origin(
    sample: Repo, daemon: GitDaemon, home: Path, expect_log: ExpectLog
) -> None:
    expect_log(r"^read: read of \w+ failed: blob \w+: the mount is shutting down$", level="ERROR")
    proxy = GitProxy(daemon.port)
    try:
        with running_daemon(home) as artifactfs:
            artifactfs.ok("add-repo", "reading", f"git://127.0.0.1:{proxy.port}/sample.git")
            mountpoint = Path(artifactfs.wait_state("reading", "ready")["mount"])
            proxy.hold()  # from now on the origin accepts and says nothing
            before = proxy.accepted
            with reader("cat", str(mountpoint / "data" / "big.bin")) as cat:
                wait_for(lambda: proxy.accepted > before, 20, "the fetch to connect")
                wait_for(lambda: blocked_in_fuse(cat.pid), 20, "cat to wait on the fetch")
                stop_daemon(artifactfs)
                failed_with(cat)
            assert_nothing_left(home, mountpoint)
    finally:
        proxy.stop()


@contextmanager
def frozen_worker(
    artifactfs: Daemon, daemon: GitDaemon, home: Path, expect_log: ExpectLog
) -> Iterator[Path]:
    """A repository mounted as "frozen" whose worker is then stopped with SIGSTOP: it cannot
    answer anything, not even SIGTERM. Yields the mount point; the worker is killed after.
    The daemon must say what it did about it (both warnings are required)."""
    expect_log(r"^frozen: worker \d+ did not stop within \d+ s$", level="WARNING", required=True)
    expect_log(r"^aborted the FUSE connection of \S+/mnt/frozen$", level="WARNING", required=True)
    artifactfs.ok("add-repo", "frozen", daemon.url("sample.git"))
    mountpoint = Path(artifactfs.wait_state("frozen", "ready")["mount"])
    (worker,) = worker_pids(home)
    os.kill(worker, signal.SIGSTOP)
    try:
        yield mountpoint
    finally:
        with suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)


def test_sigterm_with_a_frozen_worker_takes_the_last_resort(
    sample: Repo, daemon: GitDaemon, home: Path, expect_log: ExpectLog
) -> None:
    with (
        running_daemon(home) as artifactfs,
        frozen_worker(artifactfs, daemon, home, expect_log) as mnt,
    ):
        with reader("cat", str(mnt / "README.md")) as cat:
            wait_for(lambda: blocked_in_fuse(cat.pid), 20, "cat to wait on the worker")
            took = stop_daemon(artifactfs)
            assert "Software caused connection abort" in failed_with(cat)  # ECONNABORTED
        assert took >= 4.0  # it waited for the worker's grace first, then acted
        assert_nothing_left(home, mnt)
        assert "did not stop within" in artifactfs.stderr() + _logs(home)


def _logs(home: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in home.rglob("*.log"))


def test_unmount_of_a_frozen_worker_is_bounded_too(
    sample: Repo, daemon: GitDaemon, home: Path, expect_log: ExpectLog
) -> None:
    with (
        running_daemon(home) as artifactfs,
        frozen_worker(artifactfs, daemon, home, expect_log) as mnt,
    ):
        started = time.monotonic()
        artifactfs.ok("unmount", "frozen", timeout=DEADLINE)
        assert time.monotonic() - started < DEADLINE
        assert not is_mounted(mnt)
        wait_for(lambda: worker_pids(home) == [], 10, "the frozen worker to be gone")
        assert artifactfs.status("frozen")["state"] == "unmounted"
        artifactfs.check_alive()
