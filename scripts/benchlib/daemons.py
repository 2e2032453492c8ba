"""An ``artifactfs daemon`` that a benchmark runs, and everything it leaves cleaned up.

Not the tests' ``tests.helpers.daemons.Daemon``: the benchmark runs the installed program with
the measured processes' environment (``artifactfs_env``), in a session of its own, and allows
a longer stop; finding leftover workers and stopping processes reuse the tests' helpers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.helpers.daemons import worker_pids
from tests.helpers.mounts import force_unmount, is_mounted, stop_process
from tests.helpers.waiting import Timeout, wait_for

from .cli import BenchError, say
from .mounts import artifactfs_env, mounts_under, tail

DAEMON_START_TIMEOUT = 30.0
DAEMON_STOP_TIMEOUT = 30.0
"""The daemon gives its workers 20 s to stop on SIGTERM; this is longer."""
CLI_TIMEOUT = 60.0
POLL_INTERVAL = 0.02


class ArtifactDaemon:
    """``artifactfs daemon`` on a state home of its own, run by the benchmark.

    It runs in a session of its own, so a Ctrl-C at the terminal reaches only the benchmark,
    which then stops the daemon with one SIGTERM (a second signal during its shutdown would
    kill it before it unmounts). Its workers run in sessions of their own too, by design;
    ``clean_up`` finds any that are left by ``--control-socket`` and this home on their command
    line, kills them, and detaches every mount under the home.
    """

    def __init__(self, executable: Path, home: Path) -> None:
        self.executable = executable
        self.home = home
        self.env = artifactfs_env(home)
        self.output = home.with_name(f"{home.name}-daemon.out")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the daemon and return once ``artifactfs status`` answers."""
        self.home.mkdir(parents=True)
        with open(self.output, "ab") as out:
            self.process = subprocess.Popen(
                [str(self.executable), "daemon"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=self.env,
                start_new_session=True,
            )
        socket_path = self.home / "run" / "daemon.sock"
        try:
            wait_for(
                lambda: socket_path.exists() and self.cli("status").returncode == 0,
                DAEMON_START_TIMEOUT,
                "the artifactfs daemon to answer",
                interval=POLL_INTERVAL,
                while_alive=self._check_alive,
            )
        except Timeout:
            raise BenchError(
                f"artifactfs daemon did not answer within {DAEMON_START_TIMEOUT:.0f} s"
            ) from None

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise BenchError(
                f"artifactfs daemon exited with {self.process.returncode}: {tail(self.output)}"
            )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``artifactfs ARGS`` against this daemon (not timed)."""
        try:
            return subprocess.run(
                [str(self.executable), *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=self.env,
                timeout=CLI_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"artifactfs {args[0]} took over {CLI_TIMEOUT:.0f} s") from None

    def remove_repo(self, name: str) -> None:
        """``artifactfs remove-repo NAME``; its mount must be gone when the command returns."""
        result = self.cli("remove-repo", name)
        if result.returncode != 0:
            raise BenchError(f"artifactfs remove-repo {name} failed: {result.stderr.strip()}")
        if is_mounted(self.mountpoint(name)):
            raise BenchError(f"{self.mountpoint(name)} is still mounted after remove-repo")

    def mountpoint(self, name: str) -> Path:
        return self.home / "mnt" / name

    def stop(self) -> None:
        """SIGTERM (the daemon unmounts everything), then wait; SIGKILL if it will not go."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        stop_process(process, grace=DAEMON_STOP_TIMEOUT)
        if process.returncode == -signal.SIGKILL:
            say(f"warning: artifactfs daemon did not stop within {DAEMON_STOP_TIMEOUT:.0f} s")
        elif process.returncode != 0:
            say(f"warning: artifactfs daemon exited with {process.returncode}: {tail(self.output)}")

    def clean_up(self) -> None:
        """Kill leftover workers and detach every mount under the home."""
        leftovers = worker_pids(self.home)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if leftovers:
            say(f"warning: killed {len(leftovers)} artifactfs worker(s) left running")
        with contextlib.suppress(Timeout):  # not our children: wait for them to be gone
            wait_for(lambda: not worker_pids(self.home), 5, interval=POLL_INTERVAL)
        for mountpoint in mounts_under(self.home):
            say(f"warning: detaching {mountpoint}, left mounted")
            force_unmount(mountpoint)


@contextlib.contextmanager
def artifactfs_daemon(executable: Path, home: Path) -> Iterator[ArtifactDaemon]:
    """A running daemon on ``home``; stopped, and anything it leaves cleaned up, however the
    block ends (an error, Ctrl-C, SIGTERM)."""
    daemon = ArtifactDaemon(executable, home)
    try:
        daemon.start()
        yield daemon
    finally:
        try:
            daemon.stop()
        finally:
            daemon.clean_up()
