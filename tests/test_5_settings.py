"""The settings file through the real command: ``artifactfs config`` shows each value and where
it came from (never a credential); a bad file or variable is one line and exit status 2 for
every command, with nothing written; a cap from ``config.toml`` holds in a foreground mount;
and a daemon hands its settings to every worker it starts, also after the file changes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from pathlib import Path

import pytest

from artifactfs.cas.eviction import CachePolicy
from artifactfs.daemon.client import daemon_lock_held
from tests.helpers.checklogs import ExpectLog
from tests.helpers.daemons import clean_up, running_daemon, worker_pids
from tests.helpers.gitrepos import make_repo
from tests.helpers.mounts import mounted, run_cli
from tests.helpers.servers import GitDaemon
from tests.helpers.stores import store_bytes, uncapped_files
from tests.helpers.waiting import wait_for

SECRETS = {
    "ARTIFACTFS_GIT_TOKEN": "ghp_sekrit0123456789",
    "HF_TOKEN": "hf_sekrit0123456789",
    "AWS_SECRET_ACCESS_KEY": "aws-sekrit-0123456789",
}


def write_config(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(text)
    return path


def test_config_shows_each_value_and_where_it_came_from(home: Path) -> None:
    path = write_config(
        home, '[cache]\nmax_size = "3G"\n[fetch]\nio_timeout = 30\n[log]\nlevel = "info"\n'
    )
    before = path.read_bytes()
    env = {"ARTIFACTFS_IO_TIMEOUT": "12", "ARTIFACTFS_HF_CACHE": "off", **SECRETS}
    result = run_cli("config", home=home, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"# settings file: {path}"
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in lines[1:]}
    assert rows["home"][0] == str(home)
    assert rows["home"][1].startswith("variable ARTIFACTFS_HOME")
    assert rows["cache.max_size"] == ["3221225472", f"file {path}  (3.0 GiB)"]
    assert rows["fetch.io_timeout"] == ["12", "variable ARTIFACTFS_IO_TIMEOUT"]
    assert rows["fetch.offline"] == ["false", "default"]
    assert rows["hf.cache"] == ["off", "variable ARTIFACTFS_HF_CACHE"]
    assert rows["log.level"] == ["info", f"file {path}"]
    assert rows["tier.url"] == ["none", "default"]

    result = run_cli("config", "--json", home=home, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["file"] == str(path) and report["file_exists"] is True
    by_key = {row["key"]: row for row in report["settings"]}
    assert by_key["cache.max_size"]["value"] == 3 << 30
    assert by_key["cache.max_size"]["variable"] == "ARTIFACTFS_CACHE_MAX_SIZE"
    assert by_key["cache.max_size"]["flag"] == "--cache-max-size"
    assert by_key["fetch.io_timeout"]["value"] == 12.0
    assert by_key["fetch.io_timeout"]["source"] == "variable ARTIFACTFS_IO_TIMEOUT"
    assert by_key["hf.cache"]["flag"] is None
    assert by_key["log.level"]["source"] == f"file {path}"
    assert list(by_key) == [
        "home",
        "cache.max_size",
        "fetch.io_timeout",
        "fetch.offline",
        "hf.cache",
        "tier.url",
        "tier.endpoint",
        "tier.region",
        "tier.timeout",
        "tier.credentials_file",
        "checkpoint.interval",
        "log.level",
    ]
    for secret in SECRETS.values():  # credentials are no settings: never shown
        assert secret not in result.stdout
    assert path.read_bytes() == before  # nothing is ever written to the file
    assert sorted(p.name for p in home.iterdir()) == ["config.toml"]


def test_config_without_a_file_shows_the_defaults(home: Path) -> None:
    result = run_cli("config", home=home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"# settings file: {home}/config.toml (there is none)"
    default = CachePolicy.of(None, home.parent).max_size
    assert f"cache.max_size         {default} " in result.stdout
    assert "fetch.io_timeout       60 " in result.stdout
    assert "tier.url               none " in result.stdout
    assert not home.exists()  # showing settings creates no state home


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[cache]\nmax_size = "lots"\n', "cache.max_size in {path}: not a size: 'lots'"),
        ("[fetch]\nio_timeout = -1\n", "fetch.io_timeout in {path}: must be more than 0"),
        ('[fetch]\noffline = "yes"\n', "fetch.offline in {path}: must be true or false"),
        ("[cache]\nmax_sise = 1\n", "unknown setting 'cache.max_sise' in {path}"),
        ("[log\n", "the settings file {path} is not valid TOML"),
    ],
)
def test_a_bad_file_is_one_line_and_exit_2_for_every_command(
    text: str, says: str, home: Path, mnt: Path
) -> None:
    path = write_config(home, text)
    for command in (
        ["config"],
        ["config", "--json"],
        ["mount", "git://127.0.0.1:9/x.git", str(mnt)],
        ["daemon"],
        ["status"],
        ["cache", "du"],
    ):
        result = run_cli(*command, home=home)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("artifactfs: "), result.stderr
        assert says.format(path=path) in result.stderr, result.stderr
    assert sorted(p.name for p in home.iterdir()) == ["config.toml"]  # nothing written
    assert list(mnt.iterdir()) == []


def test_a_bad_variable_or_flag_is_one_line_and_exit_2(home: Path, mnt: Path) -> None:
    result = run_cli("config", home=home, env={"ARTIFACTFS_IO_TIMEOUT": "soon"})
    assert (result.returncode, result.stderr) == (
        2,
        "artifactfs: ARTIFACTFS_IO_TIMEOUT: not a number of seconds: 'soon'\n",
    )
    result = run_cli(
        "mount", "git://127.0.0.1:9/x.git", str(mnt), "--cache-max-size", "0", home=home
    )
    assert (result.returncode, result.stderr) == (
        2,
        "artifactfs: --cache-max-size: the cache needs more than 0 bytes\n",
    )
    assert not home.exists()


def test_a_cap_from_the_file_holds_in_a_foreground_mount(
    daemon: GitDaemon, repos: Path, mnt: Path, home: Path
) -> None:
    files = uncapped_files(24, seed=16)
    assert sum(len(content) for content in files.values()) > 2 * (4 << 20)
    make_repo(repos, "big.git", files)
    path = write_config(home, '[cache]\nmax_size = "4M"\n')
    hard_limit = CachePolicy(4 << 20).hard_limit
    with mounted(daemon.url("big.git"), mnt, home):
        for name, content in files.items():
            assert (mnt / name).read_bytes() == content, name
            assert store_bytes(home) <= hard_limit, name
    (log,) = (home / "run" / "logs").glob("mount-*.log")
    assert f"cache.max_size=4194304 (file {path})" in log.read_text()


def test_the_daemon_hands_its_settings_to_its_workers(
    daemon: GitDaemon, repos: Path, home: Path, expect_log: ExpectLog
) -> None:
    """The workers of a daemon keep to the settings the daemon started with (the file read
    once, by the daemon): a worker started again after the file changed has the same."""
    expect_log(r"^small: worker ended; starting another in", level="WARNING", required=True)
    files = {"a.txt": b"a\n" * 100, "b.txt": b"b\n" * 100}
    make_repo(repos, "small.git", files)
    path = write_config(home, '[fetch]\nio_timeout = 7\n[cache]\nmax_size = "64M"\n')
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "small", daemon.url("small.git"))
        mnt = home / "mnt" / "small"
        assert (mnt / "a.txt").read_bytes() == files["a.txt"]
        daemon_log = (home / "run" / "logs" / "daemon.log").read_text()
        assert f"fetch.io_timeout=7 (file {path})" in daemon_log
        assert f"cache.max_size=67108864 (file {path})" in daemon_log
        (log,) = (home / "run" / "logs").glob("mount-*.log")
        worker_says = "fetch.io_timeout=7 (variable ARTIFACTFS_IO_TIMEOUT)"
        assert worker_says in log.read_text()
        assert "cache.max_size=67108864 (variable ARTIFACTFS_CACHE_MAX_SIZE)" in log.read_text()

        path.write_text("[fetch]\nio_timeout = 9\n")  # the running daemon keeps its settings
        (pid,) = worker_pids(home)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: worker_pids(home) not in ([], [pid]), 20, "a new worker")
        artifactfs.wait_state("small", "ready")
        assert (mnt / "b.txt").read_bytes() == files["b.txt"]
        settings_lines = [line for line in log.read_text().splitlines() if "settings:" in line]
        assert len(settings_lines) == 2
        assert worker_says in settings_lines[1]
        assert "io_timeout=9" not in log.read_text()
    # the commands run with the file as it is now
    result = run_cli("config", home=home)
    assert re.search(rf"^fetch\.io_timeout +9 +file {re.escape(str(path))}$", result.stdout, re.M)


def test_a_detached_daemon_reads_the_file_and_takes_the_flags(home: Path) -> None:
    path = write_config(home, '[fetch]\nio_timeout = 7\n[log]\nlevel = "debug"\n')
    started = run_cli("daemon", "--detach", "--spare-workers", "0", "--io-timeout", "5", home=home)
    try:
        assert started.returncode == 0, started.stderr
        wait_for(
            lambda: "settings:" in (home / "run" / "logs" / "daemon.log").read_text(),
            10,
            "the daemon to log its settings",
        )
        logged = (home / "run" / "logs" / "daemon.log").read_text()
        assert "fetch.io_timeout=5 (flag --io-timeout)" in logged
        assert f"log.level=debug (file {path})" in logged
    finally:
        if (home / "run" / "daemon.lock").exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int((home / "run" / "daemon.lock").read_text()), signal.SIGTERM)
        clean_up(home)
    wait_for(lambda: not daemon_lock_held(home / "run" / "daemon.lock"), 20, "the daemon to end")
