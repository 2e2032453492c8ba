"""``artifactfs clone``: a snapshot as a real directory, through real servers on loopback.

Identical trees (bytes, modes, symlinks) for git and Hub sources and for a daemon's writable
repository with its changes; blocks really shared with the store on a loop-mounted XFS
(``filefrag`` says ``shared``); a clone killed with ``kill -9`` resumes without fetching again
what it had; bad input (a non-empty DEST, a file, a bad URL, an unknown path) is refused with
one line and nothing on disk touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from artifactfs.cas.usage import UsageDB
from tests.conftest import SAMPLE_FILES, hub_env
from tests.helpers.checklogs import ExpectLog
from tests.helpers.daemons import running_daemon
from tests.helpers.gitrepos import Executable, Repo, Submodule, Symlink, make_repo
from tests.helpers.hub import HubServer, git_blob_id
from tests.helpers.mounts import mounted, run_cli
from tests.helpers.servers import GitDaemon, GitProxy
from tests.helpers.waiting import wait_for

SIBLING = ".{}.artifactfs-clone"


def tree_of(root: Path) -> dict[str, tuple[str, object, int]]:
    """Every entry below ``root``: (kind, bytes or target, permission bits)."""
    found: dict[str, tuple[str, object, int]] = {}
    for directory, names, files in os.walk(root):
        for name in names + files:
            path = Path(directory) / name
            info = path.lstat()
            relative = str(path.relative_to(root))
            bits = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                found[relative] = ("link", os.readlink(path).encode(), 0)
            elif stat.S_ISDIR(info.st_mode):
                found[relative] = ("dir", None, bits)
            else:
                found[relative] = ("file", path.read_bytes(), bits)
    return found


def expected_tree(files: Mapping[str, object]) -> dict[str, tuple[str, object, int]]:
    """What a checkout of ``files`` (tests/helpers/gitrepos.py kinds) looks like, umask 022."""
    found: dict[str, tuple[str, object, int]] = {}
    for path, content in files.items():
        parts = path.split("/")
        for depth in range(1, len(parts)):
            found["/".join(parts[:depth])] = ("dir", None, 0o755)
        if isinstance(content, Symlink):
            found[path] = ("link", content.target, 0)
        elif isinstance(content, Executable):
            found[path] = ("file", content.content, 0o755)
        elif isinstance(content, Submodule):
            found[path] = ("dir", None, 0o755)
        else:
            assert isinstance(content, bytes)
            found[path] = ("file", content, 0o644)
    return found


@pytest.fixture(autouse=True)
def _umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_git_clone_is_the_tree(daemon: GitDaemon, sample: Repo, home: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    result = run_cli("clone", daemon.url("sample.git"), str(dest), home=home)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("cloned 8 file(s) (1.5 MiB) of git://")
    assert tree_of(dest) == expected_tree(SAMPLE_FILES)
    assert not (tmp_path / SIBLING.format("out")).exists()
    # every file's digest was checked: the copies (no reflink on this file system) whole
    assert "hashed 1.5 MiB" in result.stdout or "by reflink" in result.stdout

    again = run_cli("clone", daemon.url("sample.git"), str(tmp_path / "again"), home=home)
    assert again.returncode == 0, again.stderr
    assert "fetched 0 B" in again.stdout  # all from the store
    assert tree_of(tmp_path / "again") == expected_tree(SAMPLE_FILES)


def test_git_clone_of_some_paths(
    daemon: GitDaemon, sample: Repo, home: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "some"
    dest.mkdir()  # an empty directory is taken
    result = run_cli(
        "clone", daemon.url("sample.git"), str(dest), "--path", "deep/a/b",
        "--path", "bin/tool.sh", "--path", "links/to-readme", home=home,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    wanted = {
        p: c for p, c in SAMPLE_FILES.items() if p.startswith(("deep/", "bin/", "links/to-r"))
    }
    assert tree_of(dest) == expected_tree(wanted)
    assert "fetched" in result.stdout and "cloned 2 file(s)" in result.stdout


def hub_files() -> dict[str, bytes]:
    return {
        "README.md": b"# a model\n",
        "config.json": b'{"hidden": 8}\n',
        "empty.txt": b"",
        "weights/a.bin": os.urandom(3 << 20),
        "weights/b.bin": os.urandom(2 << 20),
        "weights/c.bin": os.urandom(1 << 20),
        "tokenizer/vocab.txt": b"a\nb\nc\n" * 1000,
    }


def test_hub_clone_is_the_tree(hub: HubServer, home: Path, tmp_path: Path) -> None:
    files = hub_files()
    hub.create_repo("org/model", files)
    env = hub_env(hub, tmp_path)
    dest = tmp_path / "model"
    result = run_cli("clone", "hf://org/model", str(dest), home=home, env=env)
    assert result.returncode == 0, result.stderr
    assert tree_of(dest) == expected_tree(files)
    for path, content in files.items():  # each fetched once
        assert hub.bytes_served("org/model", path) == len(content), path

    some = tmp_path / "some"
    result = run_cli("clone", "hf://org/model", str(some), "--path", "weights/b.bin", home=home,
                     env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert tree_of(some) == expected_tree({"weights/b.bin": files["weights/b.bin"]})
    assert hub.bytes_served("org/model", "weights/b.bin") == len(files["weights/b.bin"])


def test_bad_input_touches_nothing(
    daemon: GitDaemon, sample: Repo, home: Path, tmp_path: Path
) -> None:
    url = daemon.url("sample.git")
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_bytes(b"keep me\n")
    before = (full.stat().st_mtime_ns, (full / "mine.txt").stat().st_mtime_ns)
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"x")

    cases = [
        (("clone", url, str(full)), f"{full} exists and is not empty: refusing to clone into it"),
        (("clone", url, str(a_file)), f"{a_file} exists and is not a directory"),
        (("clone", url, str(tmp_path / "no" / "dest")), f"{tmp_path / 'no'} is not a directory"),
        (("clone", "ftp://example.com/x", str(tmp_path / "d1")), "unsupported source scheme"),
        (("clone", url, str(tmp_path / "d2"), "--path", "no/such"), "has no path 'no/such'"),
        (("clone", url, str(tmp_path / "d3"), "--path", "../up"), "not a path in a repository"),
    ]
    for args, message in cases:
        result = run_cli(*args, home=home)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert (full / "mine.txt").read_bytes() == b"keep me\n"
    assert os.listdir(full) == ["mine.txt"]
    assert before == (full.stat().st_mtime_ns, (full / "mine.txt").stat().st_mtime_ns)
    assert a_file.read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert not any((tmp_path / name).exists() for name in ("d1", "d2", "d3", "no"))


def test_kill_9_then_clone_again_resumes(hub: HubServer, home: Path, tmp_path: Path) -> None:
    """One file per chunk; the origin holds every request for the second big file: the first
    is in the clone (its done log says so) when the clone is killed. Run again, nothing it had
    is fetched again, and the result is the whole tree."""
    files = hub_files()
    hub.create_repo("org/model", files)
    env = hub_env(hub, tmp_path)
    dest = tmp_path / "model"
    sibling = tmp_path / SIBLING.format("model")
    hub.fault_stall(path="weights/b.bin")
    with open(tmp_path / "clone-killed.stderr", "w") as stderr:  # read by the log check
        child = subprocess.Popen(
            [sys.executable, "-m", "artifactfs", "clone", "hf://org/model", str(dest),
             "--chunk-files", "1"],
            env={**os.environ, "ARTIFACTFS_HOME": str(home), **env},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        try:
            wait_for(lambda: hub.stalled > 0, what="the clone to ask for weights/b.bin")
            done = wait_for(lambda: _done_lines(sibling), what="the clone's done log")
            assert (sibling / "tree" / "weights" / "a.bin").read_bytes() == files["weights/a.bin"]
            os.kill(child.pid, signal.SIGKILL)
            assert child.wait(10) == -signal.SIGKILL
            done = _done_lines(sibling)
        finally:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            child.wait(10)
    assert not dest.exists()
    assert (sibling / "artifactfs-clone.json").is_file()
    hub.release()
    wait_for(lambda: hub.stalled == 0, what="the held requests to end")
    served_before = {p: hub.bytes_served("org/model", p) for p in files}
    assert served_before["weights/a.bin"] == len(files["weights/a.bin"])
    assert served_before["weights/c.bin"] == 0

    result = run_cli("clone", "hf://org/model", str(dest), home=home, env=env)
    assert result.returncode == 0, result.stderr
    assert f"{len(done)} already made by an interrupted clone" in result.stdout
    assert tree_of(dest) == expected_tree(files)
    assert not sibling.exists()
    served = {p: hub.bytes_served("org/model", p) - served_before[p] for p in files}
    for path in ("README.md", "config.json", "empty.txt", "weights/a.bin"):
        assert served[path] == 0, path  # had before the kill: not fetched again
    assert served["weights/b.bin"] == len(files["weights/b.bin"])
    assert served["weights/c.bin"] == len(files["weights/c.bin"])


def pin_owners(home: Path) -> list[str]:
    db = UsageDB(home / "cas")
    try:
        return list(db.pin_paths())
    finally:
        db.close()


def _done_lines(sibling: Path) -> list[str]:
    with contextlib.suppress(FileNotFoundError):
        lines = (sibling / "done").read_text().split("\n")[:-1]
        if any(line for line in lines):
            return lines
    return []


def test_another_clone_into_the_same_dest_waits_its_turn(
    hub: HubServer, home: Path, tmp_path: Path
) -> None:
    """A second clone while one runs is refused (the sentinel is locked), and the sibling of
    something else that is not ours is never removed."""
    hub.create_repo("org/model", hub_files())
    env = hub_env(hub, tmp_path)
    dest = tmp_path / "model"
    hub.fault_stall(path="weights/b.bin")
    with open(tmp_path / "clone-held.stderr", "w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "artifactfs", "clone", "hf://org/model", str(dest)],
            env={**os.environ, "ARTIFACTFS_HOME": str(home), **env},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        try:
            wait_for(lambda: hub.stalled > 0, what="the clone to be held")
            second = run_cli("clone", "hf://org/model", str(dest), home=home, env=env)
            assert second.returncode == 2
            assert "another artifactfs clone is working in" in second.stderr
            # the held chunk is pinned, and a `cache gc` meanwhile keeps the running clone's pins
            assert [o for o in pin_owners(home) if o.startswith(f"clone:{child.pid}:")]
            gc = run_cli("cache", "gc", home=home)
            assert gc.returncode == 0, gc.stderr
            assert [o for o in pin_owners(home) if o.startswith(f"clone:{child.pid}:")]
        finally:
            hub.release()
            assert child.wait(60) == 0
    assert (dest / "weights" / "b.bin").stat().st_size == 2 << 20
    assert pin_owners(home) == []  # dropped once the files held their bytes

    other = tmp_path / "other"
    foreign = tmp_path / SIBLING.format("other")
    foreign.mkdir()
    (foreign / "theirs").write_bytes(b"not ours")
    refused = run_cli("clone", "hf://org/model", str(other), home=home, env=env)
    assert refused.returncode == 2
    assert "is not an unfinished artifactfs clone" in refused.stderr
    assert (foreign / "theirs").read_bytes() == b"not ours"
    assert not other.exists()


# -- block sharing on a reflink file system ---------------------------------------------------


@contextlib.contextmanager
def xfs_image(tmp_path: Path) -> Iterator[Path]:
    """A loop-mounted XFS file system with reflinks, or a skip saying why there is none."""
    if os.geteuid() != 0:
        pytest.skip("a loop mount needs root")
    if shutil.which("mkfs.xfs") is None:
        pytest.skip("mkfs.xfs is not installed (scripts/install --tests installs xfsprogs)")
    image = tmp_path / "xfs.img"
    with open(image, "wb") as out:
        out.truncate(300 << 20)
    made = subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], capture_output=True,
                          text=True, check=False)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"mkfs.xfs -m reflink=1 failed: {made.stderr.strip()}")
    attached = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True,
                              text=True, check=False)  # fmt: skip
    if attached.returncode != 0:
        pytest.skip(f"no loop device: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    mountpoint = tmp_path / "xfs"
    mountpoint.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "xfs", device, str(mountpoint)],
                                 capture_output=True, text=True, check=False)  # fmt: skip
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount XFS: {mounted.stderr.strip()}")
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", str(mountpoint)], check=True)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def shared_extents(path: Path) -> tuple[int, int]:
    """(extents, extents flagged shared) of a file, from ``filefrag -v`` (FIEMAP)."""
    report = subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True,
                            check=True).stdout  # fmt: skip
    extents = [line for line in report.splitlines() if line.strip()[:1].isdigit()]
    return len(extents), sum("shared" in line for line in extents)


def test_reflinks_share_blocks_on_xfs(
    daemon: GitDaemon, repos: Path, hub: HubServer, tmp_path: Path
) -> None:
    make_repo(repos, "weights.git", {
        "big.bin": os.urandom(4 << 20),
        "small.txt": b"small\n",
        "run.sh": Executable(b"#!/bin/sh\n"),
    })  # fmt: skip
    files = hub_files()
    hub.create_repo("org/model", files)
    with xfs_image(tmp_path) as xfs:
        home = xfs / "home"
        git_dest = xfs / "git"
        result = run_cli("clone", daemon.url("weights.git"), str(git_dest), home=home)
        assert result.returncode == 0, result.stderr
        assert "3 by reflink" in result.stdout
        total, shared = shared_extents(git_dest / "big.bin")
        assert total >= 1 and shared == total
        hub_dest = xfs / "hub"
        result = run_cli("clone", "hf://org/model", str(hub_dest), home=home,
                         env=hub_env(hub, tmp_path))  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "6 by reflink" in result.stdout  # and the empty file
        assert tree_of(hub_dest) == expected_tree(files)
        for name in ("a.bin", "b.bin", "c.bin"):
            total, shared = shared_extents(hub_dest / "weights" / name)
            assert total >= 1 and shared == total, name
        # the clone is a real, writable file of its own: the store's copy stays as it was
        with open(hub_dest / "weights" / "a.bin", "r+b") as clone:
            clone.write(b"changed")
        again = xfs / "again"
        result = run_cli("clone", "hf://org/model", str(again), home=home,
                         env=hub_env(hub, tmp_path))  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert (again / "weights" / "a.bin").read_bytes() == files["weights/a.bin"]
        # from a warm store, each reflinked file's store copy is hashed once (6 MiB and the
        # small files), unless the store is trusted (its files were verified when stored)
        assert "fetched 0 B; hashed 6.0 MiB" in result.stdout
        trusted = run_cli("clone", "hf://org/model", str(xfs / "trusted"), "--trust-cache",
                          home=home, env=hub_env(hub, tmp_path))  # fmt: skip
        assert trusted.returncode == 0, trusted.stderr
        assert "6 by reflink" in trusted.stdout and "hashed 0 B" in trusted.stdout
        assert tree_of(xfs / "trusted") == expected_tree(files)
        # the logs leave the image before it goes, for the log check
        shutil.copytree(home / "run" / "logs", tmp_path / "xfs-home" / "run" / "logs")


# -- a daemon's repository ---------------------------------------------------------------------


def test_clone_of_a_workspace_has_its_changes(daemon: GitDaemon, sample: Repo, home: Path,
                                              tmp_path: Path) -> None:  # fmt: skip
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "work", daemon.url("sample.git"), "--writable")
        mnt = home / "mnt" / "work"
        (mnt / "README.md").write_bytes(b"# edited\n")
        (mnt / "notes.txt").write_bytes(b"mine\n")
        os.chmod(mnt / "data" / "binary.dat", 0o755)
        os.rename(mnt / "deep" / "a", mnt / "moved")
        os.unlink(mnt / "empty.txt")
        os.symlink("notes.txt", mnt / "links" / "to-notes")
        dest = tmp_path / "work"
        result = artifactfs.cli("clone", "work", str(dest))
        assert result.returncode == 0, result.stderr
        assert "with the workspace's" in result.stdout
        shown = tree_of(mnt)
        del shown[".git"]  # the gitfile of the mount's git directory
        assert tree_of(dest) == shown
        assert shown["README.md"] == ("file", b"# edited\n", 0o644)
        assert shown["data/binary.dat"][2] == 0o755 and "moved/b/c/d/leaf.txt" in shown
        by_path = artifactfs.cli("clone", str(mnt), str(tmp_path / "by-path"))
        assert by_path.returncode == 0, by_path.stderr
        assert tree_of(tmp_path / "by-path") == shown  # its mount point names it too
        part = tmp_path / "part"
        result = artifactfs.cli(
            "clone", "work", str(part), "--path", "moved", "--path", "notes.txt"
        )
        assert result.returncode == 0, result.stderr
        assert tree_of(part) == {k: v for k, v in shown.items() if k.startswith(("moved", "notes"))}
        gone = artifactfs.cli("clone", "work", str(tmp_path / "gone"), "--path", "deep/a")
        assert gone.returncode == 2 and "the workspace has no path 'deep/a'" in gone.stderr
        unknown = artifactfs.cli("clone", "nosuch", str(tmp_path / "x"))
        assert unknown.returncode == 2 and not (tmp_path / "x").exists()
        artifactfs.ok("unmount", "work")  # still registered; now its database is damaged
        for leftover in (home / "repos" / "work").glob("overlay.sqlite*"):
            leftover.unlink()
        (home / "repos" / "work" / "overlay.sqlite").write_bytes(b"not a database" * 500)
        damaged = artifactfs.cli("clone", "work", str(tmp_path / "damaged"))
        assert damaged.returncode == 2, damaged.stderr
        assert damaged.stderr.startswith("artifactfs: cannot read the workspace of "), damaged
        assert damaged.stderr.count("\n") == 1 and "Traceback" not in damaged.stderr
        assert not (tmp_path / "damaged").exists()


def test_a_file_larger_than_the_cache_cap(
    hub: HubServer, home: Path, tmp_path: Path, expect_log: ExpectLog
) -> None:
    """The chunk being cloned is pinned: a file over the store's cap is fetched once and
    cloned, not evicted as soon as it lands; the pins are gone after."""
    expect_log(r"^the store holds .* over its cap", level="WARNING", required=False)
    files = hub_files()
    hub.create_repo("org/model", files)
    env = {**hub_env(hub, tmp_path), "ARTIFACTFS_CACHE_MAX_SIZE": "1M"}
    dest = tmp_path / "model"
    result = run_cli("clone", "hf://org/model", str(dest), home=home, env=env)
    assert result.returncode == 0, result.stderr
    assert tree_of(dest) == expected_tree(files)
    for path, content in files.items():
        assert hub.bytes_served("org/model", path) == len(content), path
    pins = run_cli("cache", "du", "--json", home=home)
    assert pins.returncode == 0, pins.stderr
    assert "clone:" not in pins.stdout


def test_a_failed_clone_is_kept_and_finished_later(
    daemon: GitDaemon, sample: Repo, home: Path, tmp_path: Path, expect_log: ExpectLog
) -> None:
    """Offline, with blobs the store lacks: one line, exit 1, what was made kept in the
    sibling; online, the same command finishes it."""
    expect_log(r"offline: not in the store|prefetch", level="ERROR", required=False)
    url = daemon.url("sample.git")
    first = run_cli("clone", url, str(tmp_path / "readme"), "--path", "README.md", home=home)
    assert first.returncode == 0, first.stderr
    dest = tmp_path / "out"
    failed = run_cli("clone", url, str(dest), "--offline", home=home)
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"artifactfs: clone of {url} failed: ")
    assert "the same command takes it up" in failed.stderr and "Traceback" not in failed.stderr
    assert not dest.exists()
    sibling = tmp_path / SIBLING.format("out")
    assert (sibling / "tree" / "README.md").read_bytes() == SAMPLE_FILES["README.md"]
    finished = run_cli("clone", url, str(dest), home=home)
    assert finished.returncode == 0, finished.stderr
    assert "already made by an interrupted clone" in finished.stdout
    assert tree_of(dest) == expected_tree(SAMPLE_FILES)
    assert not sibling.exists()


def test_a_server_that_tells_no_sizes(daemon: GitDaemon, sample: Repo, home: Path,
                                      tmp_path: Path) -> None:  # fmt: skip
    """Without ``object-info`` the snapshot has no sizes: each is learned from the blob (whose
    digest vouches for it)."""
    proxy = GitProxy(daemon.port, hide_capability=b"object-info")
    try:
        url = daemon.url("sample.git", proxy.port)
        dest = tmp_path / "out"
        result = run_cli("clone", url, str(dest), home=home)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("cloned 8 file(s) (1.5 MiB)")
        assert tree_of(dest) == expected_tree(SAMPLE_FILES)
    finally:
        proxy.stop()


def test_kill_9_of_a_git_clone_then_clone_again(
    daemon: GitDaemon, repos: Path, home: Path, tmp_path: Path
) -> None:
    """One file per chunk through a proxy that holds every connection accepted once the
    clone has finished a few files: killed there, run again (through the same address), the
    second run never asks the server for a blob the first one had."""
    files = {f"dir{i % 4}/f{i:02d}.txt": os.urandom(4096) for i in range(40)}
    make_repo(repos, "many.git", files)
    dest = tmp_path / "many"
    sibling = tmp_path / SIBLING.format("many")
    proxy = GitProxy(daemon.port, hold_when=lambda: len(_done_lines(sibling)) >= 3)
    url = daemon.url("many.git", proxy.port)
    with open(tmp_path / "clone-killed.stderr", "w") as stderr:  # read by the log check
        child = subprocess.Popen(
            [sys.executable, "-m", "artifactfs", "clone", url, str(dest), "--chunk-files", "1"],
            env={**os.environ, "ARTIFACTFS_HOME": str(home)},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        try:
            wait_for(lambda: proxy.held_from, what="a fetch held after a few files were cloned")
            os.kill(child.pid, signal.SIGKILL)
            assert child.wait(10) == -signal.SIGKILL
        finally:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            child.wait(10)
    proxy.stop()  # the held connection goes without reaching the server
    done = _done_lines(sibling)
    assert 3 <= len(done) < len(files)
    before = daemon.trace_mark()
    first_run = set(daemon.wanted())
    again = wait_for(lambda: _proxy_at(daemon.port, proxy.port), what="the address to be free")
    try:
        result = run_cli("clone", url, str(dest), home=home)
    finally:
        again.stop()
    assert result.returncode == 0, result.stderr
    assert f"{len(done)} already made by an interrupted clone" in result.stdout
    assert tree_of(dest) == expected_tree(files)
    second_run = set(daemon.wanted(before))
    blobs = {git_blob_id(content) for content in files.values()}
    assert second_run and second_run <= blobs  # it fetched blobs, and only those
    assert not second_run & first_run  # none twice
    assert first_run & blobs | second_run == blobs


def _proxy_at(upstream: int, port: int) -> GitProxy | None:
    """A proxy on ``port`` once the stopped one let it go (its accept, blocked in a thread,
    holds the listening socket until a connection wakes it)."""
    with contextlib.suppress(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    try:
        return GitProxy(upstream, port=port)
    except OSError:
        return None


def test_a_full_disk_is_one_line(
    daemon: GitDaemon, sample: Repo, home: Path, tmp_path: Path
) -> None:
    """DEST's file system fills up: exit 1, one line naming ENOSPC, no DEST, the sibling kept.
    A read-only one: exit 2, one line."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(small)], check=True)
    try:
        result = run_cli("clone", daemon.url("sample.git"), str(small / "out"), home=home)
        assert result.returncode == 1
        assert "No space left on device" in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert not (small / "out").exists()
        assert (small / SIBLING.format("out") / "artifactfs-clone.json").is_file()
    finally:
        subprocess.run(["umount", str(small)], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(small)], check=True)
    try:
        result = run_cli("clone", daemon.url("sample.git"), str(small / "out"), home=home)
        assert result.returncode == 2
        assert result.stderr.startswith("artifactfs: cannot work beside ")
        assert "Read-only file system" in result.stderr and result.stderr.count("\n") == 1
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_damaged_blob_in_the_store_is_fetched_again(
    daemon: GitDaemon, sample: Repo, home: Path, tmp_path: Path, expect_log: ExpectLog
) -> None:
    """A byte flipped in the store after it was published: the clone's check finds it, the
    blob is quarantined and fetched again, and the clone has the true bytes."""
    expect_log(r"in the store is damaged \(found by clone\)", level="ERROR")
    url = daemon.url("sample.git")
    assert run_cli("clone", url, str(tmp_path / "first"), home=home).returncode == 0
    blob = home / "cas" / "git-sha1" / sample.blob_id("data/big.bin")[:2]
    blob = blob / sample.blob_id("data/big.bin")
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as damaged:
        damaged.seek(1000)
        byte = damaged.read(1)
        damaged.seek(1000)
        damaged.write(bytes([byte[0] ^ 0xFF]))
    result = run_cli("clone", url, str(tmp_path / "second"), home=home)
    assert result.returncode == 0, result.stderr
    assert tree_of(tmp_path / "second") == expected_tree(SAMPLE_FILES)
    assert list((home / "cas" / "quarantine" / "git-sha1").iterdir())


def test_clone_of_a_daemon_hub_repository(hub: HubServer, home: Path, tmp_path: Path) -> None:
    """NAME of a read-only Hub repository, registered with a revision of its own: the commit
    it shows, from the store where the mount read it (nothing fetched twice)."""
    files = hub_files()
    hub.create_repo("org/model", files)
    env = hub_env(hub, tmp_path)
    with running_daemon(home, env=env) as artifactfs:
        artifactfs.ok("add-repo", "model", "hf://org/model@main")
        mnt = home / "mnt" / "model"
        assert (mnt / "weights" / "a.bin").read_bytes() == files["weights/a.bin"]
        shown = artifactfs.status("model")["commit"]
        hub.commit("org/model", {"README.md": b"# moved on\n"})  # main moves; NAME does not
        dest = tmp_path / "model"
        result = artifactfs.cli("clone", "model", str(dest), env=env)
        assert result.returncode == 0, result.stderr
        assert f"at {shown[:12]} into" in result.stdout
        assert tree_of(dest) == expected_tree(files)
        assert hub.bytes_served("org/model", "weights/a.bin") == len(files["weights/a.bin"])


def test_clone_of_a_mount_point_has_its_changes(
    daemon: GitDaemon, sample: Repo, home: Path, tmp_path: Path, mnt: Path
) -> None:
    """A foreground mount (a container's entrypoint) named by its mount point: the commit it
    shows with its workspace's changes."""
    with mounted(daemon.url("sample.git"), mnt, home):
        (mnt / "README.md").write_bytes(b"# edited in the mount\n")
        os.mkdir(mnt / "new")
        (mnt / "new" / "file.txt").write_bytes(b"new\n")
        os.unlink(mnt / "data" / "big.bin")
        dest = tmp_path / "copy"
        result = run_cli("clone", str(mnt), str(dest), home=home)
        assert result.returncode == 0, result.stderr
        assert "with the workspace's 4 changed path(s)" in result.stdout
        shown = tree_of(mnt)
        del shown[".git"]
        assert tree_of(dest) == shown
        assert shown["README.md"] == ("file", b"# edited in the mount\n", 0o644)
        assert "data/big.bin" not in shown and shown["new/file.txt"][1] == b"new\n"
        refused = run_cli("clone", str(mnt), str(tmp_path / "x"), "--ref", "main", home=home)
        assert refused.returncode == 2 and "--ref is for a SOURCE" in refused.stderr
