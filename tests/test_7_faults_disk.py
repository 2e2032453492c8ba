"""Faults: the state home's file system fills up. Readers get ENOSPC (not EIO), the logs get a
few lines (not a traceback per file), what is stored keeps being served, nothing partial is
published, and freeing space makes every read work again without a restart."""

from __future__ import annotations

import errno
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifactfs.logs import BURST
from tests.helpers.checklogs import ExpectLog, LogCheck
from tests.helpers.gitrepos import Repo, make_repo
from tests.helpers.mounts import errno_of, mounted
from tests.helpers.servers import GitDaemon

FILES = 24
FILE_BYTES = 512 * 1024
"""12 MiB of incompressible files, against a home of 6 MiB."""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (root only)")


def contents() -> dict[str, bytes]:
    rng = random.Random(7)
    return {f"f{n:02d}.bin": rng.randbytes(FILE_BYTES) for n in range(FILES)}


@pytest.fixture
def full_repo(repos: Path) -> Repo:
    return make_repo(repos, "big.git", dict(contents()))


@pytest.fixture
def small_home(tmp_path: Path, log_check: LogCheck) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(home)], check=True)
    try:
        yield home
    finally:
        log_check.collect(home)  # its logs go with it
        subprocess.run(["umount", "-l", str(home)], check=False)


def test_a_full_home_gives_enospc_and_recovers_when_space_is_freed(
    daemon: GitDaemon, full_repo: Repo, mnt: Path, small_home: Path, expect_log: ExpectLog
) -> None:
    expected = contents()
    expect_log(r"^fetching \d+ blob\(s\) failed: no space left", level="ERROR", required=True)
    expect_log(r"^read: read of \w+ failed: blob \w+: no space left", level="ERROR")
    with mounted(daemon.url("big.git"), mnt, small_home) as mount:
        failures = 0
        for _ in range(4):  # a reader that keeps trying, as a build or a walk does
            results = {n: errno_of(lambda n=n: (mnt / n).read_bytes()) for n in expected}
            read = [name for name, code in results.items() if code is None]
            refused = {code for code in results.values() if code is not None}
            failures += sum(1 for code in results.values() if code is not None)
            assert read, "nothing could be read at all"
            assert refused == {errno.ENOSPC}, results
        assert failures > BURST  # enough to flood a log that had no limit
        for name in read:  # what is stored keeps serving
            assert (mnt / name).read_bytes() == expected[name]
        log, stderr = mount.log(), mount.stderr()
        assert "Logging error" not in log + stderr and "Traceback" not in log + stderr
        assert log.count("no space left") <= 2 * BURST  # two kinds of line, each limited
        assert not list((small_home / "cas").glob("*/*/.tmp-*"))  # nothing half-written left
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_home)], check=True)
        for name in expected:  # no restart: every file reads now
            assert (mnt / name).read_bytes() == expected[name]
