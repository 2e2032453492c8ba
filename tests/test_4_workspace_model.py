"""A reference model of the workspace: random sequences of changes applied to a writable mount
and to a plain directory seeded with the same tree must give the same answers (success or the
same errno) and leave the same trees (names, types, modes, sizes, bytes, symlink targets),
through remounts and ``kill -9`` of the worker at random points.

A worker killed hard loses nothing that was written before: every change is committed to the
overlay's database before the kernel is answered, and the bytes of upper files are in the page
cache (only the machine's death needs an fsync), so the model stays whole across a kill too.

Deterministic (derandomized, no example database) and bounded in time (a few examples of a few
dozen steps; a mount per example, a new mount point so a new workspace each time).
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import tarfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.helpers.gitrepos import Executable, Repo, Symlink, make_repo
from tests.helpers.mounts import Mount, force_unmount, mounted
from tests.helpers.servers import GitDaemon

FILES = {
    "top.txt": b"top\n",
    "exe.sh": Executable(b"#!/bin/sh\n"),
    "d/f1": b"one\n" * 100,
    "d/sub/f2": b"two\n",
    "d/sub/deeper/f3": b"",
    "e/g": bytes(range(256)),
    "ln": Symlink(b"d/sub"),
}
NAMES = ["d", "e", "sub", "f1", "a", "b", "ln", "top.txt"]
MODES = [0o600, 0o644, 0o700, 0o755]
MODEL_SETTINGS = settings(
    max_examples=6,
    stateful_step_count=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=(Phase.explicit, Phase.generate),  # no shrinking: every run costs mounts; the
    # failing steps are printed as they were generated
)

paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
payloads = st.binary(max_size=3000)
offsets = st.integers(min_value=0, max_value=5000)


def outcome(action: Callable[[], Any]) -> int:
    """0 on success, else the errno."""
    try:
        action()
    except OSError as exc:
        return exc.errno or -1
    return 0


def snapshot_of(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``root``: type, mode, size and bytes or target (a mount's read-only
    ``.git`` file at the root, git's pointer to its worktree, is not part of the tree)."""
    found: dict[str, tuple[Any, ...]] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(directory) / name
            st_ = os.lstat(path)
            key = str(path.relative_to(root))
            if key == ".git" and stat.S_ISREG(st_.st_mode) and not st_.st_mode & 0o222:
                continue
            mode = stat.S_IMODE(st_.st_mode)
            if stat.S_ISLNK(st_.st_mode):
                found[key] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st_.st_mode):
                found[key] = ("dir", mode)
            else:
                found[key] = ("file", mode, st_.st_size, path.read_bytes())
    return found


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_at(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _create(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class Workspace(RuleBasedStateMachine):
    """One example: a fresh mount point (so a fresh workspace) and a fresh reference."""

    url: str
    base: Path
    home: Path
    repo: Repo
    examples = 0

    def __init__(self) -> None:
        super().__init__()
        Workspace.examples += 1
        self.mnt = self.base / f"mnt{Workspace.examples}"
        self.ref = self.base / f"ref{Workspace.examples}"
        self.ref.mkdir()
        with self.repo.archive() as archive:
            archive.extractall(self.ref, filter=tarfile.fully_trusted_filter)
        for path, _ in snapshot_of(self.ref).items():  # git's modes, not the archive's umask
            mode = os.lstat(self.ref / path).st_mode
            if not stat.S_ISLNK(mode):
                os.chmod(self.ref / path, 0o755 if mode & 0o100 else 0o644)
        self.stack = ExitStack()
        self.mount = self._mount()

    def _mount(self) -> Mount:
        return self.stack.enter_context(mounted(self.url, self.mnt, self.home))

    def teardown(self) -> None:
        self.stack.close()

    def both(self, action: Callable[[Path], Any]) -> None:
        expected = outcome(lambda: action(self.ref))
        got = outcome(lambda: action(self.mnt))
        assert got == expected, f"mount: {errno.errorcode.get(got, got)}, directory: " + (
            f"{errno.errorcode.get(expected, expected)}"
        )

    def pick(self, data: st.DataObject, files: bool = False) -> str:
        """A path: mostly one that exists in the reference (a regular file, for ``files``),
        or a new name in one of its directories, sometimes anything."""
        entries = sorted(snapshot_of(self.ref))
        if files:
            entries = [e for e in entries if (self.ref / e).is_file()] or entries
        how = data.draw(st.sampled_from(["existing"] * 6 + ["new"] * 3 + ["any"]))
        if how == "existing" and entries:
            return data.draw(st.sampled_from(entries))
        if how == "new":
            parents = ["", *(e for e in entries if os.path.isdir(self.ref / e))]
            parent = data.draw(st.sampled_from(parents))
            name = data.draw(st.sampled_from(NAMES))
            return f"{parent}/{name}" if parent else name
        return data.draw(paths)

    @rule(data=st.data(), payload=payloads)
    def create(self, data: st.DataObject, payload: bytes) -> None:
        path = self.pick(data)
        self.both(lambda root: _create(root / path, payload))

    @rule(data=st.data(), offset=offsets, payload=payloads)
    def write_at(self, data: st.DataObject, offset: int, payload: bytes) -> None:
        path = self.pick(data, files=True)
        self.both(lambda root: _write_at(root / path, offset, payload))

    @rule(data=st.data(), size=offsets)
    def truncate(self, data: st.DataObject, size: int) -> None:
        path = self.pick(data, files=True)
        self.both(lambda root: os.truncate(root / path, size))

    @rule(data=st.data())
    def rename(self, data: st.DataObject) -> None:
        source, destination = self.pick(data), self.pick(data)
        self.both(lambda root: os.rename(root / source, root / destination))

    @rule(data=st.data())
    def unlink(self, data: st.DataObject) -> None:
        path = self.pick(data)
        self.both(lambda root: os.unlink(root / path))

    @rule(data=st.data())
    def mkdir(self, data: st.DataObject) -> None:
        path = self.pick(data)
        self.both(lambda root: os.mkdir(root / path))

    @rule(data=st.data())
    def rmdir(self, data: st.DataObject) -> None:
        path = self.pick(data)
        self.both(lambda root: os.rmdir(root / path))

    @rule(data=st.data(), pointing_to=paths)
    def symlink(self, data: st.DataObject, pointing_to: str) -> None:
        path = self.pick(data)
        self.both(lambda root: os.symlink(pointing_to, root / path))

    @rule(data=st.data(), mode=st.sampled_from(MODES))
    def chmod(self, data: st.DataObject, mode: int) -> None:
        path = self.pick(data)
        self.both(lambda root: os.chmod(root / path, mode))

    @rule(data=st.data(), seconds=st.integers(min_value=0, max_value=2_000_000_000))
    def utime(self, data: st.DataObject, seconds: int) -> None:
        path = self.pick(data)
        times = (seconds * 1_000_000_000, seconds * 1_000_000_000)
        self.both(lambda root: os.utime(root / path, ns=times, follow_symlinks=False))
        for root in (self.ref, self.mnt):
            if os.path.lexists(root / path):
                assert os.lstat(root / path).st_mtime_ns == times[1]

    @rule(data=st.data())
    def fsync(self, data: st.DataObject) -> None:
        path = self.pick(data)
        self.both(lambda root: _fsync(root / path))

    @rule()
    def remount(self) -> None:
        self.stack.close()
        self.stack = ExitStack()
        self.mount = self._mount()

    @rule()
    def kill_the_worker(self) -> None:
        self.mount.process.send_signal(signal.SIGKILL)
        self.mount.process.wait(10)
        force_unmount(self.mnt)
        self.remount()

    @invariant()
    def same_trees(self) -> None:
        assert snapshot_of(self.mnt) == snapshot_of(self.ref)


def test_the_workspace_behaves_like_a_local_directory(
    daemon: GitDaemon, repos: Path, tmp_path: Path, home: Path
) -> None:
    Workspace.repo = make_repo(repos, "model.git", FILES)
    Workspace.url = daemon.url("model.git")
    Workspace.base = tmp_path
    Workspace.home = home
    Workspace.examples = 0
    run_state_machine_as_test(Workspace, settings=MODEL_SETTINGS)
