"""Keep one repository's mount worker alive while the repository is wanted.

A worker is a separate process (pyfuse3 allows one FUSE session per process) started in its
own session, so it outlives a daemon killed with ``kill -9``: the next daemon finds it by its
control socket and takes it back without unmounting anything. A worker that dies is started
again with backoff; its dead mount point is cleaned by the new worker before it mounts, and
its prepare resumes (a snapshot already on disk makes that quick).

Credentials: a token file's path goes on the worker's command line (it is not secret); a token
itself only ever travels over the worker's stdin, read once and closed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import trio

from ..errors import UserError
from ..fs.state import ChangeSignal
from ..home import ArtifactHome
from ..ipc import Message, ProtocolError, open_unix_stream
from ..mount.last_resort import force_detach
from ..mount.launch import WorkerOptions
from ..mount.mountpoints import is_stale, remove_stale
from .registry import Registry, Repo
from .spares import PYTHON, SpareWorkers, assign

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 30.0
"""How long a new worker may take to mount its placeholder."""
BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STABLE_SECONDS = 60.0
"""A worker that ran this long resets the backoff."""
STOP_GRACE = 5.0
"""How long a stopping worker gets to exit by itself (its own grace for requests still
running is shorter: worker.STOP_GRACE_SECONDS)."""
KILL_WAIT = 2.0
STOP_BOUND = STOP_GRACE + 2 * KILL_WAIT
"""Stopping a repository takes at most about this long (the last resort's own steps
included), under docker's default 10 s between SIGTERM and SIGKILL."""
ASK_SECONDS = 10.0
WATCH_RETRY_SECONDS = 0.2


def restart_delay(failures: int) -> float:
    """How long to wait before starting a worker again after ``failures`` short runs in a
    row (0 after a run that was healthy for a while): 0.5 s, doubling to 30 s."""
    return BACKOFF[min(max(failures - 1, 0), len(BACKOFF) - 1)]


class WorkerFailed(Exception):
    """A worker could not mount; the message is its last words."""


class Supervisor:
    def __init__(
        self,
        repo: Repo,
        home: ArtifactHome,
        registry: Registry,
        token: str | None,
        spares: SpareWorkers | None = None,
    ) -> None:
        self.name = repo.name
        self._spares = spares
        self.home = home
        self.registry = registry
        self.token = token
        self.status: dict[str, Any] = repo.public()
        self.changes = ChangeSignal()
        self.mounted_once = trio.Event()
        self.mount_error: str | None = None
        self._wanted = True
        self._pid: int | None = None
        self._mountpoint: str | None = repo.mountpoint
        self._done = trio.Event()
        self._stopped = trio.Event()
        self._restart_now = False
        self._changed: int | None = None
        self._checkpoint: dict[str, Any] | None = None
        """The worker's last checkpoint (or its failure), as it reported it."""
        """Changed paths of a writable workspace, as its worker last reported."""
        self.mounts = 0
        """Workers of this supervisor that mounted (a restart waits for the next one)."""

    @property
    def socket_path(self) -> str:
        return str(self.home.worker_socket(self.name))

    # -- talking to the worker ------------------------------------------------------------------

    async def ask(
        self, command: str, answer_within: float | None = ASK_SECONDS, **fields: Any
    ) -> Message:
        """Send one control command to the running worker and return its answer.

        Connecting must succeed within ``ASK_SECONDS``; the answer may take ``answer_within``
        (None: as long as the worker needs, e.g. a refresh of a large repository).
        """
        with trio.fail_after(ASK_SECONDS):
            lines = await open_unix_stream(self.socket_path)
        async with lines.stream:
            await lines.send({"cmd": command, **fields})
            with trio.fail_after(math.inf if answer_within is None else answer_within):
                answer = await lines.receive()
        if answer is None:
            raise ProtocolError("the worker closed the connection")
        return answer

    # -- the lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Take back a worker that is already serving, or start one; again until unwanted."""
        try:
            failures = 0
            while self.wanted():
                started = trio.current_time()
                try:
                    if not await self._try_adopt():
                        await self._run_new_worker()
                except WorkerFailed as exc:
                    if self.wanted():
                        self._failed(str(exc))
                except Exception as exc:  # a bug of ours must not take the daemon down
                    log.exception("%s: supervising failed", self.name)
                    self._failed(f"internal error: {type(exc).__name__} (see the daemon log)")
                if not self.wanted():  # unmounted or removed while it ran
                    break
                failures = 0 if trio.current_time() - started > STABLE_SECONDS else failures + 1
                delay = restart_delay(failures)
                if self._restart_now:  # asked for (a token given back): no backoff
                    self._restart_now, failures, delay = False, 0, 0.0
                log.warning("%s: worker ended; starting another in %.1f s", self.name, delay)
                with trio.move_on_after(delay):
                    await self._stopped.wait()
        finally:
            self._done.set()
            self.mounted_once.set()  # nobody waits for a mount that will never come
            self.changes.notify()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait_done(self) -> None:
        await self._done.wait()

    def wanted(self) -> bool:
        return self._wanted

    def _failed(self, reason: str) -> None:
        self.mount_error = reason
        self.mounted_once.set()  # wake add-repo: it reports the error
        self._record("failed", reason)
        log.error("%s: %s", self.name, reason)

    async def stop(self) -> None:
        """Unmount within ``STOP_BOUND`` seconds whatever the worker does: SIGTERM it (it fails
        what waits, unmounts and exits; a worker still starting holds the signal until it
        can); if it has not gone within ``STOP_GRACE``, abort its FUSE connection, detach its
        mount point and SIGKILL it (last_resort.py); then clean up."""
        self._wanted = False
        self._stopped.set()
        pid = self._pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        with trio.move_on_after(STOP_GRACE):
            await self._done.wait()
            return
        pid = self._pid
        log.warning("%s: worker %s did not stop within %.0f s", self.name, pid, STOP_GRACE)
        if self._mountpoint is not None:
            with trio.move_on_after(KILL_WAIT):  # fusermount3 itself must not hold us up
                path = Path(self._mountpoint)
                await trio.to_thread.run_sync(force_detach, path, abandon_on_cancel=True)
        if pid is not None:
            for kill in (os.killpg, os.kill):  # its session (the worker and any child), then it
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(pid, signal.SIGKILL)
        with trio.move_on_after(KILL_WAIT):
            await self._done.wait()
        await trio.to_thread.run_sync(_detach_if_dead, self._mountpoint)

    async def restart(self, token: str | None) -> None:
        """End the running worker and start a new one at once, holding ``token`` (a worker
        reads its token once, when it starts); return when the new one has mounted or failed
        to. Bounded: a worker stops within ``STOP_BOUND`` and mounts within
        ``MOUNT_TIMEOUT``."""
        self.token = token
        mounts = self.mounts
        self._restart_now = True
        pid = self._pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        with trio.move_on_after(STOP_BOUND + MOUNT_TIMEOUT + BACKOFF[-1]):
            while self.mounts == mounts and self.mount_error is None and not self.done:
                await self.changes.wait_past(self.changes.version)
        self._refresh_status()

    async def _try_adopt(self) -> bool:
        try:
            answer = await self.ask("status")
        except (OSError, ProtocolError, trio.TooSlowError):
            return False
        status = answer.get("status") or {}
        self._pid = status.get("pid")
        log.info("%s: took back running worker %s", self.name, self._pid)
        self.update(status)
        self.mounted_once.set()
        await self._watch()  # returns when the worker is gone
        return True

    async def _run_new_worker(self) -> None:
        repo = self.registry.get(self.name)
        if repo is None:
            self._wanted = False
            return
        self._mountpoint = repo.mountpoint
        self._record("preparing", None)
        stderr_path = self.home.worker_stderr(self.name)
        stderr_start = await trio.to_thread.run_sync(_size, stderr_path)
        options = self._worker_options(repo)
        process = self._spares.take() if self._spares is not None else None
        if process is not None and not await assign(process, options, str(stderr_path)):
            process = None
        if process is None:
            with open(stderr_path, "ab") as stderr:  # noqa: ASYNC230 - a log file opens at once
                process = await trio.lowlevel.open_process(
                    [*PYTHON, "artifactfs", *options.command_line()],
                    stdin=subprocess.PIPE if self.token else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    start_new_session=True,  # not killed with the daemon, nor by its terminal
                )
        self._pid = process.pid
        try:
            if not self.wanted():  # stopped while we were starting it
                process.send_signal(signal.SIGTERM)
            if process.stdin is not None:
                if self.token:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await process.stdin.send_all(self.token.encode())
                await process.stdin.aclose()
            await self._wait_mounted(process, stderr_path, stderr_start)
            self.mounted_once.set()
            self.mounts += 1
            self.changes.notify()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch)
                await process.wait()
                nursery.cancel_scope.cancel()
            log.info("%s: worker %d exited with %s", self.name, process.pid, process.returncode)
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            self._pid = None

    def _worker_options(self, repo: Repo) -> WorkerOptions:
        """The worker this repository needs (a spare is handed just this)."""
        return WorkerOptions(
            source=repo.source,
            mountpoint=repo.mountpoint,
            ref=repo.ref or None,
            token_file=repo.token_file or None,
            token_stdin=bool(self.token),
            keep_failed=True,
            allow_other=repo.allow_other,
            offline=repo.offline,
            require_commit=repo.require_commit,
            writable=repo.writable,
            depth=repo.depth,
            name=repo.name,
            control_socket=self.socket_path,
        )

    async def _wait_mounted(
        self, process: trio.Process, stderr_path: Path, stderr_start: int
    ) -> None:
        assert process.stdout is not None
        line = b""
        with trio.move_on_after(MOUNT_TIMEOUT):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(64)
                if not chunk:
                    break
                line += chunk
        if line.strip() == b"mounted":
            return
        with trio.move_on_after(5):
            await process.wait()
        words = await trio.to_thread.run_sync(_last_words, stderr_path, stderr_start)
        raise WorkerFailed(words or f"the worker exited ({process.returncode})")

    async def _watch(self) -> None:
        """Follow the worker's status until it goes away, recording every change."""
        while True:
            with contextlib.suppress(OSError, ProtocolError, trio.BrokenResourceError):
                lines = await open_unix_stream(self.socket_path)
                async with lines.stream:
                    await lines.send({"cmd": "watch"})
                    async for message in lines:
                        status = message.get("status")
                        if isinstance(status, dict):
                            self.update(status)
            if self._pid is None or not _alive(self._pid):
                return
            await trio.sleep(WATCH_RETRY_SECONDS)  # lost the socket, not the worker

    def update(self, status: dict[str, Any]) -> None:
        """Take in a status the worker reported."""
        self._pid = status.get("pid", self._pid)
        if "changed" in status:
            self._changed = status["changed"]
        if isinstance(status.get("checkpoint"), dict):
            self._checkpoint = status["checkpoint"]
        self.registry.record_status(self.name, status)
        self._refresh_status()

    def _record(self, state: str, error: str | None) -> None:
        self.registry.record_state(self.name, state, error)
        self._refresh_status()

    def _refresh_status(self) -> None:
        repo = self.registry.get(self.name)
        if repo is not None:
            self.status = repo.public()
            if repo.writable:
                self.status["changed"] = self._changed
            if self._checkpoint is not None:
                self.status["checkpoint"] = self._checkpoint
            if repo.token_from and not self.token:
                self.status["token"] = "missing"
                if self.status["state"] == "failed":
                    self.status["error"] = f"{self.status['error']}; {token_hint(repo)}"
        self.changes.notify()


def token_hint(repo: Repo) -> str:
    """What to do when the token ``add-repo`` was given is gone (the daemon restarted: tokens
    live in its memory only, never on disk)."""
    return (
        f"the token given in ${repo.token_from} was forgotten when the daemon restarted;"
        f" give it back with: {repo.token_from}=... artifactfs prepare {repo.name}"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _last_words(path: Path, since: int) -> str:
    """The last line this worker wrote to its stderr log (not an earlier worker's)."""
    try:
        with open(path, "rb") as log_file:
            log_file.seek(max(since, _size(path) - 4096))
            lines = log_file.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    last = lines[-1] if lines else ""
    return last.removeprefix("artifactfs: ")[:300]


def _detach_if_dead(mountpoint: str | None) -> None:
    """After a worker was killed, its mount point answers ENOTCONN: detach it."""
    if mountpoint is None:
        return
    path = Path(mountpoint)
    if is_stale(path):
        with contextlib.suppress(UserError):
            remove_stale(path)
