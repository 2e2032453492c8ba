"""Start ``artifactfs mount`` as a real process on a real mount point, and always clean up.

The mounter runs in the foreground as a subprocess. We wait for the mount with a deadline while
checking the process is alive, and in ``finally`` we unmount (``fusermount3 -u``, then ``-z``)
and stop the process (SIGTERM, then SIGKILL): no test leaves a mount or a process behind.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xattr

from .waiting import wait_for


def run_cli(
    *args: str, home: Path, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``artifactfs ARGS`` with ``$ARTIFACTFS_HOME`` set; ``env`` adds to the environment.
    Its stderr is also appended to ``<home>-cli.stderr`` beside the home, where the log check
    finds a traceback that an assertion on the exit status alone would miss (a crash exits 1)."""
    result = subprocess.run(
        [sys.executable, "-m", "artifactfs", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "ARTIFACTFS_HOME": str(home), **(env or {})},
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.stderr:
        with open(home.parent / f"{home.name}-cli.stderr", "a") as output:
            output.write(result.stderr)
    return result


def errno_of(action: Callable[[], object]) -> int | None:
    """The errno ``action`` fails with, or None if it succeeds."""
    try:
        action()
    except OSError as exc:
        return exc.errno
    return None


def blocked_in_fuse(pid: int) -> bool:
    """True while the process sleeps in the kernel waiting for a FUSE answer: a request of its
    own, or a page that a FUSE read is filling."""
    try:
        with open(f"/proc/{pid}/wchan") as wchan:
            where = wchan.read()
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    waits = ("fuse", "request_wait_answer", "folio_wait")
    return state in ("S", "D") and any(w in where for w in waits)


def parse_mountinfo(table: bytes) -> list[tuple[str, str]]:
    """The mount points of a ``/proc/self/mountinfo`` text with their file system types, in the
    table's order (a later mount at the same point is on top); the octal escapes the kernel
    writes for space, tab, newline and backslash are decoded."""
    entries = []
    for line in table.splitlines():
        left, _, right = line.partition(b" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), fields[4])
        entries.append((os.fsdecode(point), right.split()[0].decode(errors="replace")))
    return entries


def mount_table() -> list[tuple[str, str]]:
    """``parse_mountinfo`` of this process's mount table, read now."""
    with open("/proc/self/mountinfo", "rb") as table:
        return parse_mountinfo(table.read())


def is_mounted(path: Path) -> bool:
    target = str(path)
    return any(point == target for point, _ in mount_table())


def is_stale(path: Path) -> bool:
    try:
        os.statvfs(path)  # stat may be served from the kernel's cache; statfs never is
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def force_unmount(path: Path) -> None:
    for flags in (["-u"], ["-u", "-z"]):
        if not is_mounted(path):
            return
        subprocess.run(["fusermount3", *flags, "-q", str(path)], capture_output=True, check=False)


def stop_process(process: subprocess.Popen[Any], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited after ``grace`` seconds; always reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@dataclass
class Mount:
    path: Path
    process: subprocess.Popen[bytes]
    stderr_file: Path
    home: Path

    def xattr(self, name: str, path: Path | None = None) -> str:
        for _ in range(100):
            try:
                value: bytes = xattr.getxattr(str(path or self.path), f"user.artifactfs.{name}")
                return value.decode()
            except OSError as exc:  # the value grew between the size query and the read
                if exc.errno != errno.ERANGE:
                    raise
        raise AssertionError(f"xattr {name} kept changing")

    def state(self) -> str:
        return self.xattr("state")

    def wait_ready(self, timeout: float = 30) -> None:
        wait_for(
            lambda: self.state() != "preparing", timeout, "prepare", while_alive=self.check_alive
        )
        assert self.state() == "ready", f"prepare failed: {self.xattr('error')}\n{self.stderr()}"

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(
                f"artifactfs mount exited with {self.process.returncode}:\n{self.stderr()}"
            )

    def stderr(self) -> str:
        return self.stderr_file.read_text(errors="replace")

    def log(self) -> str:
        logs = sorted((self.home / "run" / "logs").glob("*.log"))
        return "".join(p.read_text(errors="replace") for p in logs)


@contextmanager
def mounted(
    source: str,
    mountpoint: Path,
    home: Path,
    *args: str,
    ready: bool = True,
    env: dict[str, str] | None = None,
) -> Iterator[Mount]:
    """Mount ``source`` at ``mountpoint`` for the duration of the block."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    stderr_file = mountpoint.parent / f"{mountpoint.name}.stderr"
    full_env = {**os.environ, "ARTIFACTFS_HOME": str(home), **(env or {})}
    with open(stderr_file, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "artifactfs", "mount", source, str(mountpoint), *args],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            env=full_env,
        )
    mount = Mount(mountpoint, process, stderr_file, home)
    try:
        wait_for(
            lambda: is_mounted(mountpoint) and not is_stale(mountpoint),
            20,
            f"mount at {mountpoint}",
            while_alive=mount.check_alive,
        )
        if ready:
            mount.wait_ready()
        yield mount
    finally:
        with suppress(Exception):
            force_unmount(mountpoint)
        with suppress(subprocess.TimeoutExpired):
            process.wait(10)  # an unmounted worker ends by itself, after its last flushes
        stop_process(process)
        force_unmount(mountpoint)
