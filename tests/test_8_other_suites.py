"""Other people's file system tests, run on a writable git mount and, in the same test, on a
plain directory: CPython's own (``test_os``, ``test_posix``, ``test_shutil``, ``test_fileio``,
``test_tempfile``, ``test_pathlib`` from Debian's ``libpython3.11-testsuite``, with ``TMPDIR``
and the working directory inside the mount), ``stress-ng``'s file system stressors with
``--verify``, and ``fio`` writing and verifying checksummed blocks.

A CPython test that passes on the plain directory must pass on the mount, except the ones
``KNOWN`` lists with the reason (docs/architecture.md, "What a workspace does not do"); a
known difference that stops happening fails too, so the list stays true."""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from tests.helpers.gitrepos import Repo
from tests.helpers.mounts import mounted
from tests.helpers.servers import GitDaemon

PYTHON = "/usr/bin/python3.11"
CPYTHON_SUITES = ("test_os", "test_posix", "test_shutil", "test_fileio", "test_tempfile",
                  "test_pathlib")  # fmt: skip
_LINK = "hard links are EPERM in a workspace (the test skips or errs when link() fails)"
KNOWN: dict[str, str] = {
    "test.test_os.LinkTests.test_link": _LINK,
    "test.test_os.LinkTests.test_link_bytes": _LINK,
    "test.test_os.LinkTests.test_unicode_name": _LINK,
    "test.test_os.TestScandir.test_attributes": _LINK,
    "test.test_posix.TestPosixDirFd.test_link_dir_fd": _LINK,
    "test.test_shutil.TestCopy.test_dont_copy_file_onto_link_to_itself": _LINK,
    "test.test_pathlib.PathTest.test_hardlink_to": _LINK,
    "test.test_pathlib.PathTest.test_link_to": _LINK,
    "test.test_pathlib.PosixPathTest.test_hardlink_to": _LINK,
    "test.test_pathlib.PosixPathTest.test_link_to": _LINK,
}
"""CPython test id -> why it fails or skips on a workspace and passes on a plain directory."""

STRESSORS = (
    "hdd", "dir", "dentry", "rename", "filename", "symlink", "chmod", "utime", "fstat",
    "seek", "sync-file", "lockf", "flock", "io", "readahead", "xattr", "getdent", "open",
    "fallocate", "copy-file",
)  # fmt: skip

needs_suites = pytest.mark.skipif(
    not Path("/usr/lib/python3.11/test/test_os.py").exists() or shutil.which("stress-ng") is None
    or shutil.which("fio") is None,
    reason="scripts/install --tests installs libpython3.11-testsuite, stress-ng and fio",
)  # fmt: skip


def cpython_outcomes(where: Path, report: Path) -> dict[str, str]:
    """Run the suites with everything they write under ``where``: test id -> outcome."""
    subprocess.run(
        [PYTHON, "-m", "test", "--junit-xml", str(report), *CPYTHON_SUITES],
        cwd=where,
        env={**os.environ, "TMPDIR": str(where)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=600,
        check=False,
    )
    outcomes = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[case.attrib["name"]] = kinds[0] if kinds else "passed"
    return outcomes


@needs_suites
def test_cpython_file_system_tests_pass_as_on_a_plain_directory(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    reference = cpython_outcomes(plain, tmp_path / "plain.xml")
    assert sum(outcome == "passed" for outcome in reference.values()) > 1000
    with mounted(daemon.url("sample.git"), mnt, home):
        work = mnt / "work"
        work.mkdir()
        found = cpython_outcomes(work, tmp_path / "mount.xml")
    assert found.keys() == reference.keys()
    differences = {
        test: f"{reference[test]} -> {found[test]}"
        for test in reference
        if reference[test] == "passed" and found[test] != "passed"
    }
    assert differences.keys() == KNOWN.keys(), {
        test: differences.get(test, "passes now: take it out of KNOWN")
        for test in differences.keys() ^ KNOWN.keys()
    }
    passed = sum(outcome == "passed" for outcome in found.values())
    plain = sum(outcome == "passed" for outcome in reference.values())
    print(f"CPython: {passed} passed on the mount, {plain} on a plain directory")


@needs_suites
@pytest.mark.parametrize("stressor", STRESSORS)
def test_stress_ng_verifies_on_the_mount(
    stressor: str, daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    with mounted(daemon.url("sample.git"), mnt, home):
        work = mnt / "stress"
        work.mkdir()
        result = subprocess.run(
            ["stress-ng", f"--{stressor}", "1", "--timeout", "2", "--verify",
             "--temp-path", str(work), "--metrics-brief"],
            cwd=work, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "successful run completed" in result.stdout + result.stderr


@needs_suites
def test_fio_writes_and_verifies_checksummed_blocks(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    with mounted(daemon.url("sample.git"), mnt, home):
        work = mnt / "fio"
        work.mkdir()
        for pattern, extra in (("randwrite", []), ("write", ["--direct=1"])):
            result = subprocess.run(
                ["fio", f"--name={pattern}", f"--directory={work}", f"--rw={pattern}",
                 "--bs=4k", "--size=8m", "--ioengine=psync", "--verify=crc32c",
                 "--do_verify=1", "--verify_fatal=1", *extra],
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            assert result.returncode == 0, result.stdout + result.stderr
            assert "verify" not in result.stderr.lower(), result.stderr
