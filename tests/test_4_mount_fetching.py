"""Fetches through a real mount: concurrent misses are coalesced, and one blob wanted by many
readers is fetched once; a killed mounter leaves a stale mount the next mount cleans up."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
from pathlib import Path

from tests.helpers.gitrepos import Repo, make_repo
from tests.helpers.mounts import errno_of, is_stale, mounted
from tests.helpers.servers import GitDaemon
from tests.helpers.waiting import wait_for

FILES = {
    f"dir{i % 4}/file{i:02}.txt": f"content of file {i}\n".encode() * (i + 1) for i in range(40)
}


def read_all_at_once(paths: list[Path]) -> dict[Path, bytes]:
    barrier = threading.Barrier(len(paths))
    results: dict[Path, bytes] = {}
    errors: list[Exception] = []

    def read(path: Path) -> None:
        try:
            barrier.wait(10)
            results[path] = path.read_bytes()
        except Exception as exc:  # noqa: BLE001 - re-raised in the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(p,)) for p in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


def test_concurrent_misses_go_out_together(
    daemon: GitDaemon, repos: Path, mnt: Path, home: Path
) -> None:
    repo = make_repo(repos, "many.git", FILES)
    with mounted(daemon.url("many.git"), mnt, home):
        daemon.clear_trace()
        results = read_all_at_once([mnt / name for name in FILES])
        for name, content in FILES.items():
            assert results[mnt / name] == content
        wanted = daemon.wanted()
        assert sorted(wanted) == sorted(repo.blob_id(name) for name in FILES)
        print(f"{len(FILES)} concurrent misses went out in {daemon.fetch_commands()} fetches")
        assert daemon.fetch_commands() < len(FILES) // 2, daemon.fetch_commands()


def test_one_blob_many_readers_one_fetch(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    with mounted(daemon.url("sample.git"), mnt, home):
        daemon.clear_trace()
        big = mnt / "data" / "big.bin"
        results = read_all_at_once([big] * 16)
        assert results[big] == big.read_bytes()
        # once, whoever reads it (data/'s other small file comes along, ahead of need)
        assert daemon.wanted().count(sample.blob_id("data/big.bin")) == 1
        assert set(daemon.wanted()) <= {
            sample.blob_id(f"data/{n}") for n in ("big.bin", "binary.dat")
        }


def test_killed_mounter_leaves_a_stale_mount_that_the_next_mount_cleans(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    with mounted(daemon.url("sample.git"), mnt, home) as mount:
        assert (mnt / "README.md").read_bytes() == b"# sample\n"
        mount.process.send_signal(signal.SIGKILL)
        mount.process.wait(10)
        wait_for(lambda: is_stale(mnt), 10, "the mount to go stale")
        assert errno_of(lambda: os.listdir(mnt)) == errno.ENOTCONN
        with mounted(daemon.url("sample.git"), mnt, home) as again:
            assert (mnt / "README.md").read_bytes() == b"# sample\n"
            assert "removing stale mount" in again.stderr()
            with open("/proc/self/mountinfo") as table:
                assert sum(1 for line in table if line.split()[4] == str(mnt)) == 1


def test_a_walker_pays_one_round_trip_per_directory_not_per_file(
    daemon: GitDaemon, repos: Path, mnt: Path, home: Path
) -> None:
    repo = make_repo(repos, "walk.git", FILES)
    with mounted(daemon.url("walk.git"), mnt, home):
        daemon.clear_trace()
        # one file after another, as grep -r or a build does (another process: a real walker)
        walked = subprocess.run(
            ["sh", "-c", 'for f in "$1"/dir1/*; do cat "$f"; done', "sh", str(mnt)],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        in_dir1 = sorted(name for name in FILES if name.startswith("dir1/"))
        assert walked == b"".join(FILES[name] for name in in_dir1)
        # the first miss, and the rest of the directory ahead of need: not one per file
        assert daemon.fetch_commands() <= 3, daemon.fetch_commands()
        assert sorted(daemon.wanted()) == sorted(repo.blob_id(name) for name in in_dir1)
