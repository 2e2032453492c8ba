"""Fetches through a real mount: concurrent misses are coalesced, and one blob wanted by many
readers is fetched once; a killed mounter leaves a stale mount the next mount cleans up."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
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


@contextlib.contextmanager
def fresh_mount(
    daemon: GitDaemon, repos: Path, mnt: Path, home: Path, name: str, files: dict[str, bytes]
) -> Iterator[Repo]:
    """A mount of a new repository holding ``files``, with the server's trace cleared once it is
    ready: what the trace holds then is what the reads cost."""
    repo = make_repo(repos, name, files)
    with mounted(daemon.url(name), mnt, home):
        daemon.clear_trace()
        yield repo


def test_concurrent_misses_go_out_together(
    daemon: GitDaemon, repos: Path, mnt: Path, home: Path
) -> None:
    with fresh_mount(daemon, repos, mnt, home, "many.git", FILES) as repo:
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
    with fresh_mount(daemon, repos, mnt, home, "walk.git", FILES) as repo:
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


TREE = {
    **{f"top{i}.txt": f"top {i}\n".encode() for i in range(3)},
    **{f"{a}/file{i}.txt": f"{a} {i} needle\n".encode() for a in "abc" for i in range(3)},
    **{
        f"{a}/sub{j}/file{i}.txt": f"{a}/sub{j} {i}\n".encode() * (i + 1)
        for a in "abc"
        for j in range(4)
        for i in range(5)
    },
}
"""3 top-level directories of 4 subdirectories each: 15 directories, 72 files."""


def grep_r(root: Path) -> list[str]:
    found = subprocess.run(
        ["grep", "-r", "-l", "-F", "-e", "needle", str(root)],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return sorted(os.path.relpath(line, root) for line in found.decode().splitlines())


def test_a_recursive_walk_is_fetched_ahead_in_a_few_packs(
    daemon: GitDaemon, repos: Path, mnt: Path, home: Path
) -> None:
    with fresh_mount(daemon, repos, mnt, home, "tree.git", TREE) as repo:
        expected = sorted(name for name, content in TREE.items() if b"needle" in content)
        assert grep_r(mnt) == expected
        # the root's files, then, once the walk shows (a/ and the root listed), every
        # directory ahead of it: a handful of packs, not one per directory (15) or file (72)
        print(f"grep -r over 15 directories took {daemon.fetch_commands()} fetches")
        assert daemon.fetch_commands() <= 5, daemon.fetch_commands()
        assert sorted(daemon.wanted()) == sorted(repo.blob_id(name) for name in TREE)


def test_listing_a_tree_fetches_nothing(
    daemon: GitDaemon, repos: Path, mnt: Path, home: Path
) -> None:
    with fresh_mount(daemon, repos, mnt, home, "tree.git", TREE):
        listed = subprocess.run(["find", str(mnt)], capture_output=True, check=True, timeout=60)
        # the root, 15 directories, the files, and the workspace's .git (a git mount is a
        # writable workspace by default: making its git directory fetches nothing either)
        assert len(listed.stdout.splitlines()) == 1 + 15 + len(TREE) + 1
        assert daemon.fetch_commands() == 0


def test_a_walk_of_one_directory_fetches_only_below_it(
    daemon: GitDaemon, repos: Path, mnt: Path, home: Path
) -> None:
    with fresh_mount(daemon, repos, mnt, home, "tree.git", TREE) as repo:
        assert grep_r(mnt / "b") == ["file0.txt", "file1.txt", "file2.txt"]
        below = sorted(repo.blob_id(name) for name in TREE if name.startswith("b/"))
        assert sorted(daemon.wanted()) == below
        assert daemon.fetch_commands() <= 4, daemon.fetch_commands()
