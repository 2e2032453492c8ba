"""Workers started before they are needed, so that ``add-repo`` does not wait for Python.

A new worker process spends 0.2 to 0.3 s starting Python and importing trio and pyfuse3 before
it can mount (docs/benchmarks.md, "Where add-repo --async spends its time"). The daemon keeps
``count`` *spares*: worker processes started ahead (``spare_child.py``), in sessions of their
own like every worker, their imports done, each waiting on its stdin for the mount it is to
serve. This is the daemon's side: the pool, and handing a spare its mount (``assign``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys

import trio

from ..mount.launch import WorkerOptions

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
            [*PYTHON, "artifactfs.daemon.spare_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # as every worker: not killed with the daemon
        )


async def assign(spare: trio.Process, options: WorkerOptions, stderr: str) -> bool:
    """Give a spare its mount; False if it is gone (start a worker the usual way then)."""
    assert spare.stdin is not None
    line = json.dumps({"worker": options.to_json(), "stderr": stderr}).encode() + b"\n"
    try:
        await spare.stdin.send_all(line)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True
