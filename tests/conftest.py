"""Fixtures: state homes, real git servers, sample repositories, and a leak check.

Test files are numbered by layer so the lowest broken layer fails first: ``test_1_*`` pure
logic, ``test_2_*`` the CAS contract on a real disk, ``test_3_*`` the git source against real
servers (no FUSE), ``test_4_*`` real mounts through the kernel.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.gitrepos import Executable, Repo, Submodule, Symlink, make_repo
from tests.helpers.hub import HubServer, running_hub
from tests.helpers.mounts import force_unmount
from tests.helpers.servers import GitDaemon, HttpGitServer

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
def _no_mount_left_behind(tmp_path: Path) -> Iterator[None]:
    """Fail a test that leaves an artifactfs mount under its temporary directory."""
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
