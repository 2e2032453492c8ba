"""artifactfs as a user other than root: real mounts through the setuid fusermount3, a real git
daemon on loopback, the real kernel. ``mount``, the daemon and ``--allow-other``.

The test user runs the tree under test from a world-readable copy with the test venv
(tests/helpers/unprivileged.py). Each test holds the machine-wide lock while it opens
/dev/fuse to users or edits /etc/fuse.conf, and puts both back in ``finally``; every process
and mount of the test users is removed afterwards, and counts as a failure if there was one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIG, BINARY
from tests.helpers.checklogs import LogCheck
from tests.helpers.gitrepos import Repo
from tests.helpers.mounts import errno_of, is_mounted
from tests.helpers.servers import GitDaemon
from tests.helpers.unprivileged import (
    FUSE_DEVICE,
    Machine,
    Runner,
    User,
    clean_up,
    ensure_test_venv,
    ensure_user,
    impossible_here,
    machine_for_users,
    mounts_of,
    processes_of,
    source_copy,
)
from tests.helpers.waiting import wait_for

IMPOSSIBLE = impossible_here()
pytestmark = pytest.mark.skipif(IMPOSSIBLE is not None, reason=IMPOSSIBLE or "")

REFUSAL = (
    "artifactfs: --allow-other needs a line 'user_allow_other' in /etc/fuse.conf (root can add"
    " it); without --allow-other only you can see the mount"
)


@pytest.fixture(scope="session")
def users() -> tuple[User, User]:
    return ensure_user("artifactfs-test"), ensure_user("artifactfs-test2")


@pytest.fixture(scope="session")
def runner(users: tuple[User, User]) -> Iterator[Runner]:
    python = ensure_test_venv()
    with source_copy(python) as source:
        runner = Runner(python, source)
        probe = runner.run(users[0], str(python), "-c", "import artifactfs.cli, pyfuse3")
        assert probe.returncode == 0, f"the test user cannot run artifactfs:\n{probe.stderr!r}"
        yield runner


@dataclass
class Setup:
    run: Runner
    user: User
    other: User
    machine: Machine
    work: Path
    """A directory of the user's that every user may traverse (mount points go here)."""

    def cli(self, *args: str, user: User | None = None) -> subprocess.CompletedProcess[bytes]:
        return self.run.cli(user or self.user, *args)

    def ok(self, *args: str) -> str:
        result = self.cli(*args)
        assert result.returncode == 0, f"{args}: {result.stderr.decode()}"
        return result.stdout.decode()

    def read(self, path: Path, user: User | None = None) -> bytes:
        """The bytes of ``path`` as ``user`` (default: the test user) reads them."""
        result = self.run.run(user or self.user, "cat", "--", str(path))
        assert result.returncode == 0, f"cat {path}: {result.stderr.decode()}"
        return result.stdout

    def directory(self, name: str) -> Path:
        path = self.work / name
        path.mkdir()
        os.chown(path, self.user.uid, self.user.gid)
        return path

    def mounted_by_user(self, path: Path) -> bool:
        return path in mounts_of(self.user)

    def state(self, path: Path) -> str:
        result = self.cli("status", str(path), "--json")
        assert result.returncode == 0, result.stderr.decode()
        return str(json.loads(result.stdout)["state"])


@pytest.fixture
def setup(runner: Runner, users: tuple[User, User], log_check: LogCheck) -> Iterator[Setup]:
    """The machine open to users, and a work directory; the logs of the user's state home
    and the outputs in the work directory are read by the log check before both go."""
    user, other = users
    with machine_for_users() as machine:
        clean_up(user, other)  # what a killed session may have left
        shutil.rmtree(user.state_home, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix="artifactfs-unprivileged-"))
        try:
            work.chmod(0o755)
            os.chown(work, user.uid, user.gid)
            yield Setup(runner, user, other, machine, work)
        finally:
            processes, mounts = clean_up(user, other)
            log_check.collect(user.state_home)
            log_check.collect(work)
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(user.state_home, ignore_errors=True)
        assert not processes and not mounts, f"left behind: processes {processes}, mounts {mounts}"


@contextlib.contextmanager
def user_mount(
    setup: Setup, source: str, mnt: Path, *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``artifactfs mount`` run by the test user, up and ready."""
    log = setup.work / f"{mnt.name}.stderr"
    process = setup.run.start(setup.user, "mount", source, str(mnt), *args, log=log)

    def alive() -> None:
        if process.poll() is not None:
            raise AssertionError(f"mount exited with {process.returncode}: {log.read_text()}")

    try:
        wait_for(lambda: setup.mounted_by_user(mnt), 20, f"the mount at {mnt}", while_alive=alive)
        wait_for(lambda: setup.state(mnt) != "preparing", 30, "prepare", 0.05, alive)
        assert setup.state(mnt) == "ready", log.read_text()
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(15)


def unmount_as_user(setup: Setup, mnt: Path, process: subprocess.Popen[bytes]) -> None:
    """``artifactfs unmount PATH`` (fusermount3 -u underneath); the mount then ends cleanly."""
    result = setup.cli("unmount", str(mnt))
    assert result.returncode == 0, result.stderr.decode()
    assert not is_mounted(mnt)
    assert process.wait(15) == 0


# -- artifactfs mount ----------------------------------------------------------------------------


def test_a_user_mounts_through_fusermount3_and_reads_exact_bytes(
    setup: Setup, daemon: GitDaemon, sample: Repo
) -> None:
    mnt = setup.directory("mnt")
    with user_mount(setup, daemon.url("sample.git"), mnt) as process:
        assert setup.read(mnt / "README.md") == b"# sample\n"
        assert setup.read(mnt / "data" / "big.bin") == BIG
        assert setup.read(mnt / "data" / "binary.dat") == BINARY
        listing = setup.run.run(setup.user, "ls", "-A", str(mnt)).stdout.decode().split("\n")
        assert "README.md" in listing and "data" in listing
        # state in the user's home by default, private to them
        state = setup.user.state_home
        for private in (state / "cas", state / "snapshots", state / "run"):
            st = private.stat()
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (setup.user.uid, 0o700), private
        assert stat.S_IMODE(state.stat().st_mode) == 0o711
        unmount_as_user(setup, mnt, process)


def test_root_cannot_see_into_a_users_mount_without_allow_other(
    setup: Setup, daemon: GitDaemon, sample: Repo
) -> None:
    mnt = setup.directory("mnt")
    with user_mount(setup, daemon.url("sample.git"), mnt) as process:
        assert errno_of(lambda: os.stat(mnt)) == errno.EACCES
        assert errno_of(lambda: os.listdir(mnt)) == errno.EACCES
        assert errno_of(lambda: os.stat(mnt / "README.md")) == errno.EACCES
        assert errno_of(lambda: open(mnt / "README.md", "rb").close()) == errno.EACCES
        assert setup.read(mnt / "README.md") == b"# sample\n"  # while its owner reads on
        # the other user cannot unmount it either, and is told why in one line
        refused = setup.cli("unmount", str(mnt), user=setup.other)
        assert refused.returncode == 2
        assert refused.stderr.decode() == (
            f"artifactfs: cannot unmount {mnt}: user {setup.user.uid} mounted it"
            " (only they or root can)\n"
        )
        assert setup.mounted_by_user(mnt)
        unmount_as_user(setup, mnt, process)


def test_allow_other_lets_root_and_another_user_read(
    setup: Setup, daemon: GitDaemon, sample: Repo
) -> None:
    setup.machine.set_user_allow_other(True)
    mnt = setup.directory("mnt")
    with user_mount(setup, daemon.url("sample.git"), mnt, "--allow-other") as process:
        assert "allow_other" in _options(mnt)
        assert (mnt / "README.md").read_bytes() == b"# sample\n"  # root
        assert (mnt / "data" / "big.bin").read_bytes() == BIG
        st = os.stat(mnt / "README.md")
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (setup.user.uid, 0o644)
        assert setup.read(mnt / "data" / "binary.dat", user=setup.other) == BINARY
        assert "README.md" in setup.run.run(setup.other, "ls", str(mnt)).stdout.decode()
        unmount_as_user(setup, mnt, process)


def test_allow_other_is_refused_without_user_allow_other(
    setup: Setup, daemon: GitDaemon, sample: Repo
) -> None:
    # commented-out lines, however indented, do not count
    setup.machine.set_user_allow_other(False, b"  # user_allow_other\n\t#user_allow_other\n")
    mnt = setup.directory("mnt")
    refused = setup.cli("mount", daemon.url("sample.git"), str(mnt), "--allow-other")
    assert (refused.returncode, refused.stderr.decode()) == (2, REFUSAL + "\n")
    assert not is_mounted(mnt)
    assert not setup.user.state_home.exists()  # refused before anything was written

    log = setup.work / "daemon.stderr"
    artifactfs = setup.run.start(setup.user, "daemon", log=log)
    try:
        wait_for(lambda: setup.cli("status").returncode == 0, 20, "the daemon to answer")
        refused = setup.cli("add-repo", "shared", daemon.url("sample.git"), "--allow-other")
        assert (refused.returncode, refused.stderr.decode()) == (2, REFUSAL + "\n")
        assert json.loads(setup.ok("status", "--json")) == []
        assert not (setup.user.state_home / "mnt" / "shared").exists()
        assert mounts_of(setup.user) == []
    finally:
        _stop_daemon(artifactfs)
    assert artifactfs.returncode == 0, log.read_text()


def test_unusable_setups_are_refused_in_one_line(
    setup: Setup, daemon: GitDaemon, sample: Repo
) -> None:
    url = daemon.url("sample.git")
    mnt = setup.directory("mnt")
    cases: list[tuple[Path, str]] = []
    root_owned = setup.work / "root-owned"
    root_owned.mkdir()
    cases.append((root_owned, f"mount point {root_owned} is not writable by you"))
    sticky = setup.work / "sticky"
    sticky.mkdir(mode=0o1777)
    sticky.chmod(0o1777)
    cases.append((sticky, f"mount point {sticky} is a sticky directory that you do not own"))
    for path, message in cases:
        result = setup.cli("mount", url, str(path))
        assert result.returncode == 2
        assert result.stderr.decode().startswith(f"artifactfs: {message}"), result.stderr
        assert result.stderr.decode().count("\n") == 1
        assert not is_mounted(path)
    FUSE_DEVICE.chmod(0o600)  # as where no udev runs; the machine fixture restores it
    result = setup.cli("mount", url, str(mnt))
    assert result.returncode == 2
    assert result.stderr.decode() == (
        "artifactfs: /dev/fuse is not open to you (mode 600): users can mount only once root"
        " runs chmod 0666 /dev/fuse (as udev does on a normal install)\n"
    )


# -- the daemon ----------------------------------------------------------------------------------


def test_the_daemon_as_a_user(setup: Setup, daemon: GitDaemon, sample: Repo) -> None:
    log = setup.work / "daemon.stderr"
    artifactfs = setup.run.start(setup.user, "daemon", log=log)
    try:
        wait_for(lambda: setup.cli("status").returncode == 0, 20, "the daemon to answer")
        setup.ok("add-repo", "sample", daemon.url("sample.git"), "--async")
        mnt = setup.user.state_home / "mnt" / "sample"
        assert setup.mounted_by_user(mnt)  # --async returned with the placeholder mounted
        status = _wait_state(setup, "sample", "ready")
        assert (status["commit"], status["mount"], status["allow_other"]) == (
            sample.commit,
            str(mnt),
            False,
        )
        assert setup.read(mnt / "README.md") == b"# sample\n"
        assert setup.read(mnt / "data" / "big.bin") == BIG
        assert errno_of(lambda: os.listdir(mnt)) == errno.EACCES  # root: not without allow_other

        setup.ok("unmount", "sample")
        assert not is_mounted(mnt)
        assert _status(setup, "sample")["state"] == "unmounted"
        setup.ok("remount", "sample")
        assert setup.read(mnt / "README.md") == b"# sample\n"
    finally:
        _stop_daemon(artifactfs)
    assert artifactfs.returncode == 0, log.read_text()
    assert mounts_of(setup.user) == []
    wait_for(lambda: not processes_of(setup.user), 10, "the workers to end")
    registry = setup.user.state_home / "registry.sqlite"
    assert registry.stat().st_uid == setup.user.uid
    with contextlib.closing(sqlite3.connect(registry)) as db:
        assert db.execute("SELECT name, wanted FROM repos").fetchall() == [("sample", 1)]


def test_the_daemon_keeps_allow_other_across_restarts(
    setup: Setup, daemon: GitDaemon, sample: Repo
) -> None:
    setup.machine.set_user_allow_other(True)
    mnt = setup.user.state_home / "mnt" / "shared"
    log = setup.work / "daemon.stderr"
    for start in ("first", "second"):
        artifactfs = setup.run.start(setup.user, "daemon", log=log)
        try:
            wait_for(lambda: setup.cli("status").returncode == 0, 20, "the daemon to answer")
            if start == "first":
                setup.ok("add-repo", "shared", daemon.url("sample.git"), "--allow-other")
            status = _wait_state(setup, "shared", "ready")
            assert status["allow_other"] is True
            assert "allow_other" in _options(mnt)
            assert (mnt / "README.md").read_bytes() == b"# sample\n"  # root, through mnt/
            assert setup.read(mnt / "data" / "binary.dat", user=setup.other) == BINARY
        finally:
            _stop_daemon(artifactfs)
        assert artifactfs.returncode == 0, log.read_text()
        assert mounts_of(setup.user) == []


# -- helpers -------------------------------------------------------------------------------------


def _options(mnt: Path) -> list[str]:
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split()
            if fields[4] == str(mnt):
                return fields[-1].split(",")
    raise AssertionError(f"{mnt} is not mounted")


def _status(setup: Setup, name: str) -> dict[str, Any]:
    (repo,) = json.loads(setup.ok("status", name, "--json"))
    return dict(repo)


def _wait_state(setup: Setup, name: str, state: str) -> dict[str, Any]:
    return wait_for(
        lambda: (s := _status(setup, name))["state"] == state and s,
        30,
        f"{name} to be {state}",
        interval=0.05,
    )


def _stop_daemon(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the daemon unmounts everything and exits."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
