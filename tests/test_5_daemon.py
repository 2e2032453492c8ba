"""The daemon through real processes: a real daemon, real workers, real git servers, the real
kernel. Registration, --async, failure and retry, crashes of workers and of the daemon."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from artifactfs.daemon.client import daemon_lock_held
from tests.conftest import BIG
from tests.helpers.checklogs import ExpectLog
from tests.helpers.daemons import Daemon, clean_up, running_daemon, worker_pids
from tests.helpers.gitrepos import Repo, commit_files, make_repo
from tests.helpers.mounts import (
    blocked_in_fuse,
    errno_of,
    is_mounted,
    is_stale,
    run_cli,
    stop_process,
)
from tests.helpers.ports import free_port
from tests.helpers.servers import GitDaemon, GitProxy, HttpGitServer
from tests.helpers.waiting import wait_for


def mounts_at(path: Path) -> int:
    with open("/proc/self/mountinfo") as table:
        return sum(1 for line in table if line.split()[4] == str(path))


def test_add_repo_async_returns_at_once_and_operations_wait(
    daemon: GitDaemon, sample: Repo, home: Path
) -> None:
    proxy = GitProxy(daemon.port, held=True)
    try:
        with running_daemon(home) as artifactfs:
            url = daemon.url("sample.git", proxy.port)
            artifactfs.ok("add-repo", "sample", url, "--async")
            mnt = home / "mnt" / "sample"
            assert is_mounted(mnt)  # returned with the placeholder mounted, server still held
            assert artifactfs.status("sample")["state"] == "preparing"
            ls = subprocess.Popen(["ls", str(mnt)], stdout=subprocess.PIPE, text=True)
            try:
                wait_for(lambda: blocked_in_fuse(ls.pid), 10, "ls to block")
                proxy.release()
                out, _ = ls.communicate(timeout=30)
            finally:
                if ls.poll() is None:
                    ls.kill()
            assert "README.md" in out.split()
            status = artifactfs.wait_state("sample", "ready")
            assert status["commit"] == sample.commit
            assert status["files"] == 12
            assert status["source"] == url
            assert status["mount"] == str(mnt)
    finally:
        proxy.stop()


def test_a_mount_path_that_does_not_exist_is_created_in_a_directory_of_ours(
    daemon: GitDaemon, sample: Repo, home: Path, tmp_path: Path
) -> None:
    wanted = tmp_path / "work" / "sample"
    wanted.parent.mkdir()
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "sample", daemon.url("sample.git"), "--mount", str(wanted))
        assert (wanted / "README.md").read_bytes() == b"# sample\n"
        refused = artifactfs.cli(
            "add-repo", "other", daemon.url("sample.git"), "--mount", str(tmp_path / "a" / "b")
        )
        assert refused.returncode == 2
        assert refused.stderr == f"artifactfs: mount point {tmp_path / 'a' / 'b'} does not exist\n"
        assert not (tmp_path / "a").exists()
        artifactfs.ok("remove-repo", "sample")


def test_add_repo_waits_until_ready(daemon: GitDaemon, sample: Repo, home: Path) -> None:
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "sample", daemon.url("sample.git"))
        assert artifactfs.status("sample")["state"] == "ready"
        mnt = home / "mnt" / "sample"
        assert (mnt / "data" / "big.bin").read_bytes() == BIG
        listing = artifactfs.ok("list-repos")
        assert listing.splitlines()[1].split()[:2] == ["sample", "ready"]


def test_failure_then_retry(
    daemon: GitDaemon, sample: Repo, home: Path, expect_log: ExpectLog
) -> None:
    port = free_port()  # nothing listens there until the retry
    expect_log(r"^cannot prepare \S+: connection refused$", level="ERROR", required=True)
    with running_daemon(home) as artifactfs:
        url = f"git://127.0.0.1:{port}/sample.git"
        failed = artifactfs.cli("add-repo", "sample", url)
        assert failed.returncode == 1
        assert failed.stderr == "artifactfs: sample failed: connection refused\n"
        status = artifactfs.status("sample")
        assert (status["state"], status["error"]) == ("failed", "connection refused")
        mnt = home / "mnt" / "sample"
        assert errno_of(lambda: os.listdir(mnt)) == errno.EIO
        proxy = GitProxy(daemon.port, held=True, port=port)  # up now, but slow to answer
        try:
            artifactfs.ok("prepare", "sample", "--async")
            assert artifactfs.status("sample")["state"] == "preparing"
            ls = subprocess.Popen(["ls", str(mnt)], stdout=subprocess.PIPE, text=True)
            try:
                wait_for(lambda: blocked_in_fuse(ls.pid), 10, "ls to wait on the re-armed gate")
                proxy.release()
                out, _ = ls.communicate(timeout=30)
            finally:
                if ls.poll() is None:
                    ls.kill()
            assert ls.returncode == 0 and "README.md" in out.split()
            assert artifactfs.wait_state("sample", "ready")["commit"] == sample.commit
            assert (mnt / "README.md").read_bytes() == b"# sample\n"
        finally:
            proxy.stop()


def test_a_killed_worker_comes_back(
    daemon: GitDaemon, sample: Repo, home: Path, expect_log: ExpectLog
) -> None:
    expect_log(r"^sample: worker ended; starting another in", level="WARNING", required=True)
    proxy = GitProxy(daemon.port)
    try:
        with running_daemon(home) as artifactfs:
            artifactfs.ok("add-repo", "sample", daemon.url("sample.git", proxy.port))
            mnt = home / "mnt" / "sample"
            (pid,) = worker_pids(home)
            proxy.hold()  # the next fetch stalls: kill the worker in the middle of it
            reader = subprocess.Popen(
                ["cat", str(mnt / "data" / "big.bin")], stdout=subprocess.DEVNULL
            )
            wait_for(lambda: proxy.accepted >= 2, 10, "the blob fetch to start")
            os.kill(pid, signal.SIGKILL)
            reader.wait(20)
            proxy.release()
            wait_for(lambda: worker_pids(home) not in ([], [pid]), 20, "a new worker")
            artifactfs.wait_state("sample", "ready")
            assert mounts_at(mnt) == 1 and not is_stale(mnt)
            assert (mnt / "data" / "big.bin").read_bytes() == BIG
    finally:
        proxy.stop()


def test_a_killed_daemon_leaves_mounts_serving_and_the_next_takes_them_back(
    daemon: GitDaemon, sample: Repo, home: Path
) -> None:
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "sample", daemon.url("sample.git"))
        mnt = home / "mnt" / "sample"
        (worker,) = worker_pids(home)
        held = os.open(mnt / "README.md", os.O_RDONLY)  # dies with the mount if it goes away
        try:
            artifactfs.kill()
            assert (mnt / "data" / "big.bin").read_bytes() == BIG  # still served
            artifactfs.start()
            wait_for(
                lambda: f"took back running worker {worker}" in artifactfs.stderr(),
                20,
                "the new daemon to take the worker back",
            )
            assert artifactfs.status("sample")["state"] == "ready"
            assert worker_pids(home) == [worker]
            assert os.pread(held, 100, 0) == b"# sample\n"  # the mount never went away
        finally:
            os.close(held)
        artifactfs.ok("unmount", "sample")
        assert not is_mounted(mnt)
        assert artifactfs.status("sample")["state"] == "unmounted"
        artifactfs.ok("remount", "sample")
        assert (mnt / "README.md").read_bytes() == b"# sample\n"


def test_everything_killed_comes_back_on_the_next_start(
    daemon: GitDaemon, sample: Repo, repos: Path, home: Path
) -> None:
    other = make_repo(repos, "other.git", {"hello.txt": b"hello\n"})
    proxy = GitProxy(daemon.port, held=True)
    try:
        with running_daemon(home) as artifactfs:
            artifactfs.ok("add-repo", "sample", daemon.url("sample.git"))
            artifactfs.ok("add-repo", "other", daemon.url("other.git", proxy.port), "--async")
            artifactfs.kill()
            for pid in worker_pids(home):
                os.kill(pid, signal.SIGKILL)
            wait_for(lambda: worker_pids(home) == [], 10, "the workers to die")
            proxy.release()
            artifactfs.start()
            artifactfs.wait_state("sample", "ready")
            assert artifactfs.wait_state("other", "ready")["commit"] == other.commit
            for name in ("sample", "other"):
                assert mounts_at(home / "mnt" / name) == 1
            assert (home / "mnt" / "other" / "hello.txt").read_bytes() == b"hello\n"
    finally:
        proxy.stop()


def test_sigterm_unmounts_everything_and_the_next_start_mounts_it_again(
    daemon: GitDaemon, sample: Repo, home: Path
) -> None:
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "sample", daemon.url("sample.git"))
        assert artifactfs.process is not None
        artifactfs.process.send_signal(signal.SIGTERM)
        assert artifactfs.process.wait(30) == 0
        assert not is_mounted(home / "mnt" / "sample")
        assert worker_pids(home) == []
        artifactfs.start()
        assert artifactfs.wait_state("sample", "ready")["commit"] == sample.commit


def test_two_repositories_share_the_cache(daemon: GitDaemon, repos: Path, home: Path) -> None:
    first = make_repo(repos, "first.git", {"shared.bin": BIG, "a.txt": b"a\n"})
    make_repo(repos, "second.git", {"copy/shared.bin": BIG, "b.txt": b"b\n"})
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "first", daemon.url("first.git"))
        artifactfs.ok("add-repo", "second", daemon.url("second.git"))
        assert (home / "mnt" / "first" / "shared.bin").read_bytes() == BIG
        assert (home / "mnt" / "second" / "copy" / "shared.bin").read_bytes() == BIG
        assert daemon.wanted().count(first.blob_id("shared.bin")) == 1


def test_two_workers_missing_the_same_blob_at_once_fetch_it_once(
    daemon: GitDaemon, repos: Path, home: Path
) -> None:
    first = make_repo(repos, "first.git", {"shared.bin": BIG})
    make_repo(repos, "second.git", {"copy/shared.bin": BIG})
    proxy = GitProxy(daemon.port)
    readers: list[subprocess.Popen[bytes]] = []
    try:
        with running_daemon(home) as artifactfs:
            for name in ("first", "second"):
                artifactfs.ok("add-repo", name, daemon.url(f"{name}.git", proxy.port))
            proxy.hold()
            before = proxy.accepted
            paths = [
                home / "mnt" / "first" / "shared.bin",
                home / "mnt" / "second" / "copy" / "shared.bin",
            ]
            readers.append(subprocess.Popen(["cat", str(paths[0])], stdout=subprocess.PIPE))
            wait_for(lambda: proxy.accepted == before + 1, 10, "the first fetch to start")
            readers.append(subprocess.Popen(["cat", str(paths[1])], stdout=subprocess.PIPE))
            wait_for(lambda: blocked_in_fuse(readers[1].pid), 10, "the second reader to wait")
            proxy.release()
            for reader in readers:
                out, _ = reader.communicate(timeout=30)
                assert out == BIG
            assert proxy.accepted == before + 1  # the second worker never asked the server
            assert daemon.wanted().count(first.blob_id("shared.bin")) == 1
    finally:
        for reader in readers:
            if reader.poll() is None:
                reader.kill()
                reader.communicate()
        proxy.stop()


def test_remove_repo_with_purge(daemon: GitDaemon, sample: Repo, home: Path) -> None:
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "sample", daemon.url("sample.git"))
        assert (home / "mnt" / "sample" / "data" / "big.bin").read_bytes() == BIG
        workspace = home / "repos" / "sample"
        assert (workspace / "git" / "HEAD").exists()
        out = artifactfs.ok("remove-repo", "sample", "--purge")
        snapshots = home / "snapshots"
        assert out == (
            f"removed {snapshots / f'git-{sample.commit}.pack'}\n"
            f"removed {snapshots / f'git-{sample.commit}.v2.sqlite'}\n"
            f"removed {workspace}\n"
        )
        assert not workspace.exists()
        assert artifactfs.registry_rows() == []
        assert not (home / "mnt" / "sample").exists()
        big = sample.blob_id("data/big.bin")
        assert (home / "cas" / "git-sha1" / big[:2] / big).read_bytes() == BIG  # the cache stays


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["add-repo", "sample", "SOURCE"], "already registered"),
        (["add-repo", "a/b", "SOURCE"], "not a valid repository name"),
        (["add-repo", ".hidden", "SOURCE"], "not a valid repository name"),
        (["add-repo", "x" * 65, "SOURCE"], "not a valid repository name"),
        (["add-repo", "new", "ftp://example.com/x.git"], "unsupported source scheme"),
        (["add-repo", "new", "ssh://-oProxyCommand=x/r"], "starts with '-'"),
        (["add-repo", "new", "ssh://-oProxyCommand=x@h/r"], "starts with '-'"),
        (["add-repo", "new", "https://u:pw@example.com/x.git"], "do not put a password"),
        (["add-repo", "new", "SOURCE", "--ref", "a..b"], "not a valid ref name"),
        (["add-repo", "new", "SOURCE", "--mount", "OUTER/inner"], "inside another"),
        (["add-repo", "new", "SOURCE", "--mount", "FULL"], "not empty"),
        (["add-repo", "new", "SOURCE", "--mount", "relative/path"], "does not exist"),
        (["add-repo", "new", "SOURCE", "--token-file", "/no/such/file"], "cannot read the token"),
        (["add-repo", "new", "SOURCE", "--token-file", "FIFO"], "not a regular file"),
        (["add-repo", "new", "SOURCE", "--mount", "HOME/snapshots"], "inside the state directory"),
        (["status", "nosuch"], "no repository named 'nosuch'"),
        (["prepare", "nosuch"], "no repository named 'nosuch'"),
        (["unmount", "nosuch"], "no repository named 'nosuch'"),
        (["remount", "nosuch"], "no repository named 'nosuch'"),
        (["remove-repo", "nosuch"], "no repository named 'nosuch'"),
    ],
)
def test_bad_input_changes_nothing(
    args: list[str], fragment: str, daemon: GitDaemon, sample: Repo, home: Path, tmp_path: Path
) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_bytes(b"x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outer = tmp_path / "outer"
    outer.mkdir()
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "sample", daemon.url("sample.git"), "--mount", str(outer))
        before = artifactfs.registry_rows()
        substitutions = {"SOURCE": daemon.url("sample.git"), "FULL": str(full), "FIFO": str(fifo)}
        concrete = [
            substitutions.get(a, a).replace("OUTER", str(outer)).replace("HOME", str(home))
            for a in args
        ]
        result = artifactfs.cli(*concrete)
        assert result.returncode == 2, result
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("artifactfs: ") and fragment in lines[0]
        assert artifactfs.registry_rows() == before
        assert (full / "keep").read_bytes() == b"x"


def test_no_daemon_running(home: Path, daemon: GitDaemon, sample: Repo) -> None:
    idle = Daemon(home)
    for args in (["add-repo", "x", daemon.url("sample.git")], ["status"], ["list-repos"]):
        result = idle.cli(*args)
        assert result.returncode == 2
        assert result.stderr == (
            f"artifactfs: no artifactfs daemon is running for {home}; "
            "start one with: artifactfs daemon\n"
        )


def test_one_daemon_per_home(home: Path) -> None:
    with running_daemon(home):
        second = Daemon(home)
        result = second.cli("daemon")
        assert result.returncode == 2
        assert "a daemon is already running" in result.stderr


def _cmdlines() -> bytes:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                found.append((entry / "cmdline").read_bytes())
    return b"\n".join(found)


@pytest.mark.parametrize("how", ["environment", "token-file"])
def test_a_private_repository_with_a_token(
    how: str, sample: Repo, repos: Path, home: Path, tmp_path: Path, expect_log: ExpectLog
) -> None:
    token = "tok-3f9a7c1e5d"
    expect_log(
        r"^cannot prepare \S+: authentication required or refused by the server \(401\); "
        r"no token was given",
        level="ERROR",
        required=True,
    )
    expect_log(r"^private: worker ended; starting another in", level="WARNING", required=True)
    server = HttpGitServer(repos, token=token)
    try:
        with running_daemon(home) as artifactfs:
            url = server.url("sample.git")
            refused = artifactfs.cli("add-repo", "private", url)
            assert refused.returncode == 1
            assert "authentication required or refused by the server (401)" in refused.stderr
            artifactfs.ok("remove-repo", "private")

            if how == "environment":
                artifactfs.ok("add-repo", "private", url, env={"ARTIFACTFS_GIT_TOKEN": token})
            else:
                token_file = tmp_path / "token"
                token_file.write_text(token + "\n")
                artifactfs.ok("add-repo", "private", url, "--token-file", str(token_file))
            mnt = home / "mnt" / "private"
            assert (mnt / "README.md").read_bytes() == b"# sample\n"  # a lazy fetch, later
            (pid,) = worker_pids(home)
            os.kill(pid, signal.SIGKILL)  # the next worker still has the token
            wait_for(lambda: worker_pids(home) not in ([], [pid]), 20, "a new worker")
            artifactfs.wait_state("private", "ready")
            assert (mnt / "data" / "big.bin").read_bytes() == BIG

            secret = token.encode()
            assert secret not in _cmdlines()
            shown = artifactfs.ok("status", "--json") + artifactfs.ok("list-repos")
            assert token not in shown
            for path in home.rglob("*"):
                if path.is_file() and not path.is_socket():
                    assert secret not in path.read_bytes(), path
            assert secret not in artifactfs.stderr().encode()
    finally:
        server.stop()


def test_a_token_a_restarted_daemon_forgot_is_named_and_given_back(
    sample: Repo, repos: Path, home: Path, expect_log: ExpectLog
) -> None:
    """Tokens live in the daemon's memory only: after a daemon restart, a worker that had to
    start again has none. Its failed state says which variable to give back, and ``prepare``
    with it set restarts the worker holding it."""
    token = "tok-a81c4e27"
    expect_log(
        r"^cannot prepare \S+: authentication required or refused by the server \(401\)",
        level="ERROR",
        required=True,
    )
    expect_log(r"^private: ", level="WARNING")
    expect_log(r"^private: .*forgotten", level="ERROR")
    server = HttpGitServer(repos, token=token)
    try:
        with running_daemon(home) as artifactfs:
            url = server.url("sample.git")
            artifactfs.ok("add-repo", "private", url, env={"ARTIFACTFS_GIT_TOKEN": token})
            assert "token" not in artifactfs.status("private")
            artifactfs.kill()
            for pid in worker_pids(home):
                os.kill(pid, signal.SIGKILL)
            wait_for(lambda: worker_pids(home) == [], 10, "the worker to die")
            artifactfs.start()
            failed = artifactfs.wait_state("private", "failed")
            assert failed["token"] == "missing"
            assert failed["error"].endswith(
                "; the token given in $ARTIFACTFS_GIT_TOKEN was forgotten when the daemon"
                " restarted; give it back with: ARTIFACTFS_GIT_TOKEN=... artifactfs prepare"
                " private"
            ), failed["error"]
            registry = (home / "registry.sqlite").read_bytes()
            assert token.encode() not in registry

            artifactfs.ok("prepare", "private", env={"ARTIFACTFS_GIT_TOKEN": token})
            ready = artifactfs.wait_state("private", "ready")
            assert "token" not in ready and ready["error"] is None
            mnt = home / "mnt" / "private"
            assert (mnt / "data" / "big.bin").read_bytes() == BIG  # fetched with the token
    finally:
        server.stop()


def test_refresh_moves_to_the_new_commit_without_mixing_trees(
    daemon: GitDaemon, repos: Path, home: Path
) -> None:
    repo = make_repo(
        repos, "moving.git", {"a.txt": b"one\n", "old.txt": b"old\n", "dir/x": b"x1\n"}
    )
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "moving", daemon.url("moving.git"), "--read-only")
        mnt = home / "mnt" / "moving"
        held_file = os.open(mnt / "a.txt", os.O_RDONLY)
        held_dir = os.open(mnt / "dir", os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert os.pread(held_file, 100, 0) == b"one\n"
            assert (mnt / "old.txt").exists()  # a name the kernel now caches as present
            assert not (mnt / "new.txt").exists()  # and one it caches as absent
            assert (mnt / "dir" / "x").read_bytes() == b"x1\n"
            changes = {"a.txt": b"two!\n", "new.txt": b"new\n", "dir/x": b"x2\n"}
            moved = commit_files(repo, changes, remove=("old.txt",))
            assert artifactfs.status("moving")["commit"] == repo.commit
            artifactfs.ok("refresh", "moving")
            assert artifactfs.status("moving")["commit"] == moved.commit
            assert (mnt / "a.txt").read_bytes() == b"two!\n"
            assert (mnt / "new.txt").read_bytes() == b"new\n"
            assert (mnt / "dir" / "x").read_bytes() == b"x2\n"
            assert sorted(os.listdir(mnt)) == ["a.txt", "dir", "new.txt"]
            assert not (mnt / "old.txt").exists()
            # what was open before keeps the old commit, whole
            assert os.pread(held_file, 100, 0) == b"one\n"
            assert os.listdir(held_dir) == ["x"]
            with open(f"/proc/self/fd/{held_dir}/x", "rb") as old_x:
                assert old_x.read() == b"x1\n"
        finally:
            os.close(held_file)
            os.close(held_dir)
        artifactfs.ok("refresh", "moving")  # nothing new: stays
        assert artifactfs.status("moving")["commit"] == moved.commit


def test_remove_and_unmount_while_a_worker_is_still_preparing(
    daemon: GitDaemon, sample: Repo, home: Path
) -> None:
    proxy = GitProxy(daemon.port, held=True)
    try:
        with running_daemon(home) as artifactfs:
            url = daemon.url("sample.git", proxy.port)
            artifactfs.ok("add-repo", "early", url, "--async")
            waiting = subprocess.Popen(
                [sys.executable, "-m", "artifactfs", "prepare", "early"],
                env={**os.environ, "ARTIFACTFS_HOME": str(home)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # follows the preparing repository
            artifactfs.ok("remove-repo", "early")
            assert waiting.wait(20) in (0, 1, 2)  # it is told, it does not hang
            waiting.communicate()
            mnt = home / "mnt" / "early"
            assert not is_mounted(mnt) and not mnt.exists()
            assert worker_pids(home) == [] and artifactfs.registry_rows() == []
            artifactfs.ok("add-repo", "early", url, "--async")  # the name is free again
            artifactfs.ok("unmount", "early")
            artifactfs.ok("remount", "early", "--async")
            artifactfs.ok("unmount", "early")
            proxy.release()
            artifactfs.ok("remount", "early")
            assert artifactfs.status("early")["state"] == "ready"
            assert (home / "mnt" / "early" / "README.md").read_bytes() == b"# sample\n"
    finally:
        proxy.stop()


def test_a_listing_interrupted_by_a_refresh_stays_whole(
    daemon: GitDaemon, repos: Path, home: Path
) -> None:
    old = {f"old-{n:04d}.txt": b"" for n in range(2000)}
    repo = make_repo(repos, "wide.git", old)
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "wide", daemon.url("wide.git"), "--read-only")
        mnt = home / "mnt" / "wide"
        with os.scandir(mnt) as entries:
            first = next(entries).name  # one getdents call done, many to go
            commit_files(repo, {f"new-{n:04d}.txt": b"" for n in range(2000)}, remove=tuple(old))
            artifactfs.ok("refresh", "wide")
            rest = [entry.name for entry in entries]
        assert sorted([first, *rest]) == sorted(old)
        assert sorted(os.listdir(mnt)) == [f"new-{n:04d}.txt" for n in range(2000)]


def test_a_command_right_after_starting_the_daemon_waits_for_it(
    daemon: GitDaemon, sample: Repo, home: Path
) -> None:
    """``artifactfs daemon &`` then ``artifactfs add-repo`` at once, as a script does: the
    client finds the daemon's lock held and its socket not there yet, and waits."""
    home.mkdir(parents=True)
    starting = subprocess.Popen(
        [sys.executable, "-m", "artifactfs", "daemon", "--spare-workers", "0"],
        env={**os.environ, "ARTIFACTFS_HOME": str(home)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        added = run_cli("add-repo", "sample", daemon.url("sample.git"), home=home)
        assert added.returncode == 0, added.stderr
        assert (home / "mnt" / "sample" / "README.md").read_bytes() == b"# sample\n"
    finally:
        stop_process(starting)
        clean_up(home)
    alone = run_cli("list-repos", home=home)  # no daemon, no lock: no wait, one line
    assert alone.returncode == 2
    assert alone.stderr == (
        f"artifactfs: no artifactfs daemon is running for {home}; start one with: "
        "artifactfs daemon\n"
    )


def test_daemon_detach_returns_once_it_serves(home: Path) -> None:
    started = run_cli("daemon", "--detach", "--spare-workers", "0", home=home)
    try:
        assert started.returncode == 0, started.stderr
        pid = int((home / "run" / "daemon.lock").read_text())
        assert started.stdout == f"artifactfs daemon {pid} serving {home}\n"
        assert run_cli("list-repos", home=home).stdout == "no repositories\n"
        again = run_cli("daemon", "--detach", home=home)
        assert (again.returncode, again.stderr) == (
            2,
            f"artifactfs: a daemon is already running for {home} (pid {pid})\n",
        )
    finally:
        if (home / "run" / "daemon.lock").exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int((home / "run" / "daemon.lock").read_text()), signal.SIGTERM)
        clean_up(home)
    wait_for(lambda: not daemon_lock_held(home / "run" / "daemon.lock"), 20, "the daemon to end")
