"""artifactfs mounts as the benchmarks time them, and what they need of the mount table.

The tests' ``tests.helpers.mounts.mounted`` waits by polling; a benchmark must not add a
polling interval to what it measures, so ``mounted`` here starts the installed ``artifactfs``
program, notes the ``perf_counter`` of the spawn, and wakes on the kernel's notice that the
mount table changed (``MountTable``). Unmounting and stopping reuse the tests' helpers.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.mounts import force_unmount, mount_table, parse_mountinfo, stop_process

from .cli import BenchError, say
from .paths import PYCACHE, WORK
from .timing import wait_exactly

FUSE_TYPE = "fuse.artifactfs"
MOUNT_TIMEOUT = 60.0
READY_TIMEOUT = 300.0
UNMOUNT_TIMEOUT = 30.0


class MountTable:
    """``/proc/self/mountinfo``, read on every change: the kernel wakes ``poll()`` with
    POLLPRI when the mount table changes, so no sleep adds to the measured time."""

    def __init__(self) -> None:
        self._file = open("/proc/self/mountinfo", "rb", buffering=0)  # noqa: SIM115
        self._poll = select.poll()
        self._poll.register(self._file, select.POLLPRI | select.POLLERR)

    def close(self) -> None:
        self._file.close()

    def fs_type_at(self, path: Path) -> str | None:
        """The file system type of the topmost mount at ``path``, or None."""
        self._file.seek(0)
        target = str(path)
        found = None
        for point, fs_type in parse_mountinfo(self._file.read() or b""):
            if point == target:
                found = fs_type
        return found

    def wait_change(self, timeout: float) -> None:
        self._poll.poll(max(0, int(timeout * 1000)))


def filesystem_of(path: Path) -> str:
    """The type of the file system ``path`` is on, from the mount table."""
    target = str(path.resolve())
    found, longest = "unknown", -1
    for point, fs_type in mount_table():
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= longest:
            found, longest = fs_type, len(point)
    return found


def mounts_under(path: Path) -> list[Path]:
    """Every mount point at or below ``path`` (an absolute path without symlinks), deepest
    first, so that unmounting them in this order never meets a busy parent."""
    prefix = str(path).rstrip("/")
    found = {
        Path(point)
        for point, _ in mount_table()
        if point == prefix or point.startswith(prefix + "/")
    }
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_tree(path: Path) -> None:
    """Delete ``path`` unless something is still mounted inside it."""
    if mounts_under(path):
        say(f"warning: leaving {path}: still mounted")
        return
    shutil.rmtree(path, ignore_errors=True)


SHM = Path("/dev/shm")
SHM_NEEDED = 1 << 30


def default_scratch() -> Path:
    """A tmpfs (``/dev/shm``, if it has 1 GiB free), else ``bench-work/``.

    Peer 2 creates thousands of files, and a disk file system makes it measure the disk: ext4
    slows file creation down for minutes after many deletions (its inode allocator skips
    recently deleted inodes), and every run deletes the clones of the run before.
    """
    with contextlib.suppress(OSError):
        free = os.statvfs(SHM)
        if filesystem_of(SHM) == "tmpfs" and free.f_bavail * free.f_frsize >= SHM_NEEDED:
            return SHM
    return WORK


def artifactfs_env(home: Path) -> dict[str, str]:
    """The environment of every measured artifactfs process: its own state home, and a
    bytecode cache that persists between runs (see ``PYCACHE``)."""
    env = {**os.environ, "ARTIFACTFS_HOME": str(home), "PYTHONPYCACHEPREFIX": str(PYCACHE)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a process's output file, on one line, for an error message."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def listdir_within(path: Path, timeout: float) -> tuple[list[str], float]:
    """``os.listdir(path)`` in a thread (it blocks until the mount is ready); return the names
    and the ``perf_counter`` at which the call returned. Raise BenchError after ``timeout``."""
    outcome: dict[str, object] = {}

    def list_it() -> None:
        try:
            outcome["names"] = os.listdir(path)
        except OSError as exc:
            outcome["error"] = exc
        outcome["at"] = time.perf_counter()

    thread = threading.Thread(target=list_it, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise BenchError(f"listing {path} did not return within {timeout:.0f} s")
    if "error" in outcome:
        raise BenchError(f"listing {path} failed: {outcome['error']}")
    names = outcome["names"]
    at = outcome["at"]
    assert isinstance(names, list) and isinstance(at, float)
    return names, at


@dataclass
class Mount:
    process: subprocess.Popen[bytes]
    mountpoint: Path
    started: float
    """``perf_counter`` at the spawn."""
    output: Path

    def peak_rss(self) -> int:
        """The mount process's peak resident set (``VmHWM``), in bytes."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        if found is None:
            raise BenchError(f"no VmHWM in /proc/{self.process.pid}/status")
        return int(found[1]) * 1024


@contextlib.contextmanager
def mounted(
    executable: Path,
    url: str,
    where: Path,
    home: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Mount]:
    """``artifactfs mount URL`` on ``where/mnt`` with state ``home`` (default: a new, empty
    ``where/home``) and ``env`` added to the environment, yielded once its mount point is in
    the mount table; unmounted and its process reaped however the block ends."""
    mountpoint, output = where / "mnt", where / "mount.out"
    if home is None:
        home = where / "home"
        home.mkdir(parents=True)
    mountpoint.mkdir()
    table = MountTable()
    process: subprocess.Popen[bytes] | None = None
    try:
        with open(output, "wb") as out:
            started = time.perf_counter()
            process = subprocess.Popen(
                [str(executable), "mount", url, str(mountpoint)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={**artifactfs_env(home), **(env or {})},
            )
        deadline = started + MOUNT_TIMEOUT
        while (fs_type := table.fs_type_at(mountpoint)) is None:
            if process.poll() is not None:
                raise BenchError(f"artifactfs exited with {process.returncode}: {tail(output)}")
            if time.perf_counter() > deadline:
                raise BenchError(f"artifactfs did not mount within {MOUNT_TIMEOUT:.0f} s")
            table.wait_change(min(0.1, deadline - time.perf_counter()))
        if fs_type != FUSE_TYPE:
            raise BenchError(f"{mountpoint} got a {fs_type} mount, not {FUSE_TYPE}")
        yield Mount(process, mountpoint, started, output)
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, check=False)
        code, _ = wait_exactly(process, UNMOUNT_TIMEOUT)
        if code is None:
            raise BenchError(
                f"artifactfs did not exit within {UNMOUNT_TIMEOUT:.0f} s of its unmount"
            )
        if code != 0:
            say(f"warning: artifactfs exited with {code} after unmount: {tail(output)}")
    finally:
        table.close()
        force_unmount(mountpoint)
        if process is not None:
            stop_process(process)
        force_unmount(mountpoint)
