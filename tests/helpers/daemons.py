"""Run ``artifactfs daemon`` as a real process, and leave nothing behind however a test ends.

Workers run in sessions of their own (they outlive a killed daemon by design), so clean-up
finds them by their command line, kills them, and detaches every mount under the home.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .mounts import force_unmount, run_cli, stop_process
from .waiting import wait_for


@dataclass
class Daemon:
    home: Path
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    """Options of ``artifactfs daemon``."""
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home.parent / f"{self.home.name}-daemon.stderr", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "artifactfs", "daemon", *self.args],
            env={**os.environ, "ARTIFACTFS_HOME": str(self.home), **self.env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        wait_for(self.answers, 20, "the daemon to answer", while_alive=self.check_alive)
        return self

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"the daemon exited with {self.process.returncode}:\n{self.stderr()}"
            )

    def answers(self) -> bool:
        return self.cli("status").returncode == 0

    def stderr(self) -> str:
        path = self.home.parent / f"{self.home.name}-daemon.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, home=self.home, timeout=timeout, env=env)

    def ok(self, *args: str, **kwargs: Any) -> str:
        result = self.cli(*args, **kwargs)
        assert result.returncode == 0, f"{args}: {result.stderr}"
        return result.stdout

    def status(self, name: str) -> dict[str, Any]:
        (repo,) = json.loads(self.ok("status", name, "--json"))
        return dict(repo)

    def wait_state(self, name: str, state: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(
            lambda: (s := self.status(name))["state"] == state and s,
            timeout,
            f"{name} to be {state}",
            while_alive=self.check_alive,
        )

    def registry_rows(self) -> list[tuple[Any, ...]]:
        path = self.home / "registry.sqlite"
        if not path.exists():
            return []
        with contextlib.closing(sqlite3.connect(path)) as db:
            return db.execute(
                "SELECT name, source, ref, mountpoint, wanted FROM repos ORDER BY name"
            ).fetchall()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def _processes(*files: str) -> Iterator[tuple[int, list[bytes]]]:
    """Every process, with these files of its /proc directory (those that are gone skipped)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), [(entry / name).read_bytes() for name in files]
            except OSError:
                continue


def worker_pids(home: Path) -> list[int]:
    """Every worker process serving a mount of this home (a spare's title has spaces where
    a command line has NULs: look for the parts, not for whole arguments)."""
    return [
        pid
        for pid, (command,) in _processes("cmdline")
        if b"--control-socket" in command and str(home).encode() in command
    ]


def spare_pids(home: Path) -> list[int]:
    """Spare workers (daemon/spares.py) of a daemon of this home, not yet given a mount."""
    variable = f"ARTIFACTFS_HOME={home}".encode()
    return [
        pid
        for pid, (command, environ) in _processes("cmdline", "environ")
        if b"artifactfs.daemon.spare_child" in command and variable in environ.split(b"\0")
    ]


def clean_up(home: Path) -> None:
    for pid in worker_pids(home) + spare_pids(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with open("/proc/self/mountinfo") as table:
        mounts = [Path(line.split()[4]) for line in table if str(home) in line.split()[4]]
    for path in mounts:
        force_unmount(path)


@contextlib.contextmanager
def running_daemon(
    home: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> Iterator[Daemon]:
    daemon = Daemon(home, env or {}, args)
    try:
        yield daemon.start()
    finally:
        daemon.stop()
        clean_up(home)
