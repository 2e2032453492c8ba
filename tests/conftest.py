"""Fixtures: state homes, real git servers, sample repositories, a leak check and a log check.

Test files are numbered by layer so the lowest broken layer fails first: ``test_1_*`` pure
logic (and the package's layering, from its imports), ``test_2_*`` the CAS contract on a real
disk, ``test_3_*`` the sources against real servers and the read path in-process (the real
operations, content and sources with no kernel: test_3_inprocess_reads.py), ``test_4_*`` real
mounts through the kernel, ``test_5_*`` the daemon, ``test_6_*`` the whole program in its
settings (shutdown, sandboxes, other users, Docker), ``test_7_*`` faults done to a real mount
(a damaged store, a full disk, bad bytes from the Hub), ``test_8_*`` other people's test
suites on a mount, ``test_9_*`` the container image built and run with podman (marker
``container``).

Every test ends with two checks: no mount is left under its ``tmp_path``, and the logs of the
artifactfs processes it ran (``run/logs/*.log`` of each state home, and the ``*.stderr`` files
of mounts, workers, daemons and commands, all under ``tmp_path``) hold no WARNING, ERROR, CRITICAL,
traceback or ``--- Logging error ---`` it did not declare: a mount answers EIO whatever went
wrong, so a test that expects EIO would otherwise pass over a crash. A test declares the lines
it provokes on purpose with ``expect_log(r"message regex", level=..., required=...)``; see
tests/helpers/checklogs.py for what is read and how lines are matched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.checklogs import ExpectLog, LogCheck
from tests.helpers.gitrepos import Executable, Repo, Submodule, Symlink, make_repo
from tests.helpers.hub import HubServer, running_hub
from tests.helpers.mounts import force_unmount
from tests.helpers.servers import GitDaemon, HttpGitServer

pytest_plugins = ["pytester"]  # test_1_checklogs.py runs the log check in a pytest of its own

BIG = os.urandom(1536 * 1024)
BINARY = bytes(range(256)) * 64

SAMPLE_FILES = {
    "README.md": b"# sample\n",
    "empty.txt": b"",
    "bin/tool.sh": Executable(b"#!/bin/sh\necho tool\n"),
    "data/binary.dat": BINARY,
    "data/big.bin": BIG,
    "deep/a/b/c/d/leaf.txt": b"leaf\n",
    "name with spaces.txt": b"spaces\n",
    "unicod\u00e9.txt": "caf\u00e9\n".encode(),
    "links/to-readme": Symlink(b"../README.md"),
    "links/to-dir": Symlink(b"../deep/a"),
    "links/dangling": Symlink(b"does/not/exist"),
    "links/absolute": Symlink(b"/etc/hostname"),
    "vendor/submodule": Submodule("0123456789abcdef0123456789abcdef01234567"),
}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def repos(tmp_path: Path) -> Path:
    base = tmp_path / "repos"
    base.mkdir()
    return base


@pytest.fixture
def daemon(repos: Path) -> Iterator[GitDaemon]:
    server = GitDaemon(repos)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def http_server(repos: Path) -> Iterator[HttpGitServer]:
    server = HttpGitServer(repos)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hub() -> Iterator[HubServer]:
    """A Hugging Face Hub stand-in on loopback (tests/helpers/hub.py)."""
    with running_hub() as server:
        yield server


def hub_env(server: HubServer, tmp_path: Path) -> dict[str, str]:
    """The environment a mount of the stand-in needs: its endpoint, no real token, no Xet."""
    return {
        "HF_ENDPOINT": server.endpoint,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_TOKEN": "",
        "HF_HUB_DISABLE_XET": "1",
    }


@pytest.fixture
def sample(repos: Path) -> Repo:
    return make_repo(repos, "sample.git", SAMPLE_FILES)


@pytest.fixture
def mnt(tmp_path: Path) -> Path:
    path = tmp_path / "mnt"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def log_check(tmp_path: Path) -> Iterator[LogCheck]:
    """Fail a test whose artifactfs logs hold a warning, an error or a traceback that it did
    not declare (tests/helpers/checklogs.py). It ends after every other fixture of the test
    (they all come after it), so the daemons and mounts they stop have written their last."""
    check = LogCheck([tmp_path])
    yield check
    report = check.report()
    if report is not None:
        pytest.fail(report, pytrace=False)


@pytest.fixture
def expect_log(log_check: LogCheck) -> ExpectLog:
    """``expect_log(r"regex", level="ERROR", required=False)``: this test provokes a line
    whose message matches the regex (never match the logger name); the log check lets it by."""
    return log_check.expect


@pytest.fixture(autouse=True)
def _no_mount_left_behind(tmp_path: Path, log_check: LogCheck) -> Iterator[None]:
    """Fail a test that leaves an artifactfs mount under its temporary directory (before the
    log check reads the logs: it needs ``log_check``)."""
    yield
    leftovers = []
    with open("/proc/self/mountinfo") as table:
        for line in table:
            mountpoint = line.split()[4]
            if mountpoint.startswith(str(tmp_path)):
                leftovers.append(Path(mountpoint))
    for path in leftovers:
        force_unmount(path)
    assert not leftovers, f"mounts left behind: {leftovers}"
