"""Bad input to ``artifactfs mount``: one clear line, a non-zero exit, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.checklogs import ExpectLog
from tests.helpers.gitrepos import Repo
from tests.helpers.mounts import is_mounted, run_cli
from tests.helpers.ports import free_port
from tests.helpers.servers import GitDaemon


def assert_one_line(result_stderr: str, *fragments: str) -> None:
    lines = result_stderr.strip().splitlines()
    assert len(lines) == 1, result_stderr
    assert lines[0].startswith("artifactfs: "), result_stderr
    for fragment in fragments:
        assert fragment in lines[0], result_stderr
    assert "Traceback" not in result_stderr


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("git://", "no host"),
        ("ftp://example.com/repo.git", "unsupported source scheme"),
        ("git://127.0.0.1/", "no repository path"),
        ("git://127.0.0.1:99999/x.git", "malformed source URL"),
        ("http://[::1/x.git", "malformed source URL"),
        ("https://example.com/x.git?token=1", "unexpected ?query"),
        ("", "not a valid source"),
        ("git://host/with space", "not a valid source"),
        ("/no/such/repository", "no git repository"),
        ("file:///no/such/repository", "no git repository"),
        ("hf://org/na--me", "not a Hugging Face repository"),
        ("ssh://-oProxyCommand=touch%20x/repo", "its host name '-oproxycommand"),
        ("ssh://-oProxyCommand=x@host/repo", "its user name starts with '-'"),
        ("-oProxyCommand=x@host:repo", "its user name starts with '-'"),
    ],
)
def test_malformed_sources(source: str, fragment: str, mnt: Path, home: Path) -> None:
    result = run_cli("mount", "--", source, str(mnt), home=home)
    assert result.returncode == 2
    assert_one_line(result.stderr, fragment)
    assert not home.exists()
    assert not is_mounted(mnt)


def test_mount_point_problems(daemon: GitDaemon, sample: Repo, tmp_path: Path, home: Path) -> None:
    url = daemon.url("sample.git")
    a_file = tmp_path / "file"
    a_file.write_bytes(b"x")
    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_bytes(b"keep me")
    cases = [
        (tmp_path / "missing", "does not exist"),
        (a_file, "is not a directory"),
        (full, "is not empty"),
    ]
    for path, fragment in cases:
        result = run_cli("mount", url, str(path), home=home)
        assert result.returncode == 2, path
        assert_one_line(result.stderr, fragment)
        assert not is_mounted(path)
    assert (full / "something").read_bytes() == b"keep me"
    assert a_file.read_bytes() == b"x"
    assert not home.exists()


@pytest.mark.parametrize("ref", ["a..b", "-x", "refs/heads/", "with space", "x.lock"])
def test_invalid_ref_names(
    ref: str, daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    result = run_cli("mount", daemon.url("sample.git"), str(mnt), f"--ref={ref}", home=home)
    assert result.returncode == 2
    assert_one_line(result.stderr, "not a valid ref name")


def test_unknown_ref(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path, expect_log: ExpectLog
) -> None:
    expect_log(r"^cannot prepare \S+: unknown ref 'nosuch'$", level="ERROR", required=True)
    result = run_cli("mount", daemon.url("sample.git"), str(mnt), "--ref", "nosuch", home=home)
    assert result.returncode == 1
    assert_one_line(result.stderr, "unknown ref 'nosuch'")
    assert not is_mounted(mnt)


@pytest.mark.parametrize(
    ("host", "fragment"),
    [
        (f"127.0.0.1:{free_port()}", "connection refused"),
        ("no-such-host.invalid", "cannot resolve"),
    ],
)
def test_unreachable_hosts(
    host: str, fragment: str, mnt: Path, home: Path, expect_log: ExpectLog
) -> None:
    expect_log(rf"^cannot prepare git://{host}/x\.git: {fragment}", level="ERROR", required=True)
    result = run_cli("mount", f"git://{host}/x.git", str(mnt), home=home)
    assert result.returncode == 1
    assert_one_line(result.stderr, fragment)
    assert not is_mounted(mnt)
    assert list((home / "snapshots").iterdir()) == []


def test_unknown_repository_on_a_live_server(
    daemon: GitDaemon, mnt: Path, home: Path, expect_log: ExpectLog
) -> None:
    expect_log(
        r"^cannot prepare \S+: git protocol error: no such repository: /missing\.git$",
        level="ERROR",
        required=True,
    )
    result = run_cli("mount", daemon.url("missing.git"), str(mnt), home=home)
    assert result.returncode == 1
    assert_one_line(result.stderr, "no such repository")
    assert not is_mounted(mnt)


def test_unmount_and_status_of_something_else(tmp_path: Path, home: Path) -> None:
    for command in (["unmount", str(tmp_path)], ["status", str(tmp_path)]):
        result = run_cli(*command, home=home)
        assert result.returncode == 2
        assert_one_line(result.stderr, "not")


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan", "1e300", "soon"])
def test_bad_io_timeouts(
    value: str, daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    result = run_cli(
        "mount", daemon.url("sample.git"), str(mnt), f"--io-timeout={value}", home=home
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--io-timeout" in result.stderr
    assert not home.exists()
    assert not is_mounted(mnt)
