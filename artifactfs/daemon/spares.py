"""Workers started before they are needed, so that ``add-repo`` does not wait for Python.

A mount worker spends 0.3 s or more of its start importing trio, pyfuse3 and dulwich before it
can mount anything (docs/benchmarks.md). The daemon keeps ``count`` *spares*: worker processes
started ahead, in sessions of their own like every worker, their imports done, each waiting on
its stdin for one JSON line, ``{"argv": [...], "stderr": PATH}``: the command line of the mount
it is to serve (what follows ``artifactfs``) and the file its stderr goes to. From then on it
is exactly the worker ``artifactfs mount ...`` would have been, the rest of its stdin (a
token, if any) included, and it shows that command line as its process title (``ps``). A
spare whose daemon goes away sees its stdin close and exits.

Run as ``python -m artifactfs.daemon.spares``; the daemon side is ``SpareWorkers``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys

import trio

log = logging.getLogger(__name__)

PYTHON = (sys.executable, "-P", "-m")
"""How workers and spares are started: ``-P``, nothing is imported from the working
directory."""
RETRY_SECONDS = 10.0


class SpareWorkers:
    """Keeps ``count`` spare workers started (``run``) and hands them out (``take``)."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._ready: list[trio.Process] = []
        self._taken = trio.Event()

    async def run(self) -> None:
        """Start spares as they are taken; runs until cancelled, then kills those left. A
        spare that cannot be started (no memory, a process limit) is tried again later: the
        daemon does without meanwhile."""
        try:
            while True:
                while len(self._ready) < self._count:
                    try:
                        self._ready.append(await self._start())
                    except OSError as exc:
                        log.warning("cannot start a spare worker (%s); trying again later", exc)
                        await trio.sleep(RETRY_SECONDS)
                self._taken = trio.Event()
                await self._taken.wait()
        finally:
            with trio.CancelScope(shield=True):
                for spare in self._ready:
                    with contextlib.suppress(ProcessLookupError):
                        spare.kill()
                    await spare.wait()
                self._ready.clear()

    def take(self) -> trio.Process | None:
        """A live spare, or None (then start a worker the usual way)."""
        self._taken.set()
        while self._ready:
            spare = self._ready.pop(0)
            if spare.poll() is None:
                return spare
            log.warning("a spare worker exited by itself (%s)", spare.returncode)
        return None

    async def _start(self) -> trio.Process:
        return await trio.lowlevel.open_process(
            [*PYTHON, __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # as every worker: not killed with the daemon
        )


async def assign(spare: trio.Process, argv: list[str], stderr: str) -> bool:
    """Give a spare its mount; False if it is gone (start a worker the usual way then)."""
    assert spare.stdin is not None
    line = json.dumps({"argv": argv, "stderr": stderr}).encode() + b"\n"
    try:
        await spare.stdin.send_all(line)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


def main() -> int:
    # what a worker would otherwise import after it was asked for
    import artifactfs.mount.worker
    import artifactfs.sources.git.source  # noqa: F401

    line = sys.stdin.readline()
    if not line:
        return 0  # the daemon went away before it needed us
    assignment = json.loads(line)
    fd = os.open(assignment["stderr"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.dup2(fd, 2)
    os.close(fd)
    from setproctitle import setproctitle

    from artifactfs.cli import main as run_command

    argv = [str(arg) for arg in assignment["argv"]]
    sys.argv = ["artifactfs", *argv]
    # what ps and /proc/PID/cmdline show: the worker it now is (the args joined by spaces)
    setproctitle(" ".join([*PYTHON, "artifactfs", *argv]))
    return run_command(argv)


if __name__ == "__main__":
    sys.exit(main())
