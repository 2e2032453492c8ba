"""A worker's control socket: how the daemon asks a mount for its status, watches it, retries
its prepare, refreshes it or stops it.

The socket lives at a known path, not on an inherited pipe, so a mount outlives the daemon
that started it: a daemon killed with ``kill -9`` and started again connects to the same
socket and takes the worker back, and the mount never goes away.

Requests (one JSON line each): ``status``; ``watch`` (a status line now and after every
change, and twice a second while preparing, until the connection closes); ``prepare`` (retry
a failed prepare, or refresh a ready mount); ``refresh``; ``stop``; ``prefetch`` (``paths``:
fetch those files, and all below those directories, now; the CLI asks it directly);
``checkpoint`` (``name``, ``force``: the workspace to the tier, taken while changes are held
off, mount/checkpointing.py; the CLI asks it directly; a lost compare-and-swap is answered
with ``stale``).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import trio

from ..errors import SourceError
from ..fs.gate import GateState
from ..fs.state import MountState
from ..ipc import LineStream, Message, ProtocolError, unix_listener

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 0.5
KEEPALIVE_SECONDS = 30.0
"""A watch sends its status at least this often, so a watcher that died is noticed."""


class Controllable(Protocol):
    state: MountState

    def status(self) -> dict[str, Any]: ...

    async def prepare(self) -> str: ...

    async def refresh(self, discard_changes: bool = False) -> str: ...

    def request_stop(self, why: str) -> None: ...

    async def prefetch(self, paths: list[str]) -> dict[str, Any]: ...

    async def checkpoint(self, name: str | None, force: bool = False) -> dict[str, Any]: ...


async def serve_control(
    path: str,
    worker: Controllable,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    listener = await unix_listener(path)
    task_status.started()

    async def handle(stream: trio.SocketStream) -> None:
        await _handle(LineStream(stream), worker)

    await trio.serve_listeners(handle, [listener])


async def _handle(lines: LineStream, worker: Controllable) -> None:
    try:
        async with lines.stream:
            request = await lines.receive()
            if request is None:
                return
            try:
                await _answer(lines, request, worker)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError):
                raise
            except Exception:  # a bug must cost this answer, not the mount
                log.exception("control request %r failed", request.get("cmd"))
                await lines.send({"ok": False, "error": "internal error (see the mount's log)"})
    except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError) as exc:
        log.debug("control connection ended: %s", exc)


async def _answer(lines: LineStream, request: Message, worker: Controllable) -> None:
    command = request.get("cmd")
    if command == "status":
        await lines.send({"ok": True, "status": worker.status()})
    elif command == "watch":
        await _watch(lines, worker)
    elif command in ("prepare", "refresh"):
        try:
            discard = bool(request.get("discard_changes"))
            message = await (worker.prepare() if command == "prepare" else worker.refresh(discard))
        except SourceError as exc:
            await lines.send({"ok": False, "error": str(exc), "status": worker.status()})
        else:
            await lines.send({"ok": True, "message": message, "status": worker.status()})
    elif command == "prefetch":
        paths = request.get("paths")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            await lines.send({"ok": False, "error": "prefetch needs a list of paths"})
            return
        try:
            counts = await worker.prefetch(paths)
        except SourceError as exc:
            await lines.send({"ok": False, "error": str(exc)})
        else:
            await lines.send({"ok": True, **counts})
    elif command == "checkpoint":
        await _checkpoint(lines, request, worker)
    elif command == "stop":
        await lines.send({"ok": True})
        worker.request_stop("asked to stop by the daemon")
    else:
        await lines.send({"ok": False, "error": f"unknown command {str(command)[:40]!r}"})


async def _checkpoint(lines: LineStream, request: Message, worker: Controllable) -> None:
    from .checkpointing import CheckpointFailed

    name = request.get("name")
    if name is not None and not isinstance(name, str):
        await lines.send({"ok": False, "error": "checkpoint needs a name"})
        return
    try:
        done = await worker.checkpoint(name, bool(request.get("force")))
    except CheckpointFailed as exc:
        await lines.send({"ok": False, "error": str(exc), "stale": exc.stale})
    else:
        await lines.send({"ok": True, **done})


async def _watch(lines: LineStream, worker: Controllable) -> None:
    changes = worker.state.changes
    while True:
        version = changes.version
        await lines.send({"status": worker.status()})
        preparing = worker.state.gate.state is GateState.PREPARING
        with trio.move_on_after(PROGRESS_SECONDS if preparing else KEEPALIVE_SECONDS):
            await changes.wait_past(version)
