"""A writable mount's checkpoints: on request (``artifactfs checkpoint``, over the control
socket), every ``checkpoint.interval`` seconds, and at a clean stop.

A checkpoint of a live mount is of one instant: the worker holds off every change to the
workspace (``fs/hold.py``) while it captures (the overlay's table in one read transaction,
and every upper or git directory file hashed, or copied and hashed if it changed since the
last capture: the time it holds changes off grows with what changed, not with the
workspace), then lets changes go on and sends the capture to the tier (``overlay/
checkpoints``). One checkpoint of a workspace at a time, across processes (an ``flock``).
The periodic ones and the one at a stop are sent only if the workspace differs from what this
node last sent there (the manifest's digest).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ..fs.hold import Busy, WriteHold
from ..overlay.checkpoints import state as saved
from ..overlay.checkpoints.capture import Captured, CaptureError, capture
from ..overlay.checkpoints.publish import Published, StaleCheckpoint, publish
from ..tier.objects import ObjectStore, TierError

log = logging.getLogger(__name__)

STAGING = "checkpoint-staging"
STOP_SECONDS = 3.0
"""A checkpoint at a stop gets this long; the stop goes on without it after (the daemon
gives a stopping worker 5 s: daemon/supervisor.py's ``STOP_GRACE``). The periodic
checkpoints carry the bulk, so the one at a stop has little left to send."""


class CheckpointFailed(Exception):
    """One line for the user; ``stale`` when another node moved the pointer."""

    def __init__(self, message: str, stale: bool = False) -> None:
        super().__init__(message)
        self.stale = stale


@dataclass
class Checkpointer:
    workspace: Path
    store: Callable[[], ObjectStore]
    """Opens (once) the tier's store: blocking, called in a thread."""
    tier_url: str
    source: str
    ref: str | None
    hold: WriteHold | None
    on_done: Callable[[], None] | None = None
    """Told after every checkpoint, taken or failed (the worker's status changes)."""
    last: dict[str, Any] = field(default_factory=dict)
    """The last checkpoint taken (``ref``, ``manifest``, ``at``) or failed (``error`` too),
    for ``status``."""

    async def take(
        self, name: str, force: bool = False, only_if_changed: bool = False
    ) -> Published:
        try:
            done = await self._take(name, force, only_if_changed)
        except CheckpointFailed as exc:
            self.last = {**self.last, "error": str(exc), "failed_at": _now()}
            raise
        else:
            if not done.unchanged or "error" in self.last:
                self.last = {"ref": done.ref, "manifest": done.manifest, "at": _now()}
            return done
        finally:
            if self.on_done is not None:
                self.on_done()

    async def _take(self, name: str, force: bool, only_if_changed: bool) -> Published:
        lock = await trio.to_thread.run_sync(saved.LockHandle, self.workspace)
        try:
            state = await trio.to_thread.run_sync(saved.load, self.workspace, self.tier_url)
            staging = self.workspace / STAGING

            def read() -> Captured:
                return capture(self.workspace, staging, state, self.source, self.ref)

            try:
                if self.hold is not None:
                    async with self.hold.held():
                        captured = await trio.to_thread.run_sync(read)
                else:
                    captured = await trio.to_thread.run_sync(read)
            except (CaptureError, Busy) as exc:
                raise CheckpointFailed(f"cannot checkpoint {self.workspace}: {exc}") from None
            except OSError as exc:
                raise CheckpointFailed(f"cannot checkpoint {self.workspace}: {exc}") from None

            def send() -> Published:
                try:
                    return publish(self.store(), captured, state, name, force, only_if_changed)
                finally:
                    saved.save(self.workspace, state)

            try:
                return await trio.to_thread.run_sync(send)
            except StaleCheckpoint as exc:
                raise CheckpointFailed(str(exc), stale=True) from None
            except (TierError, CaptureError, OSError) as exc:
                raise CheckpointFailed(f"checkpoint {name} failed: {exc}") from None
        finally:
            await trio.to_thread.run_sync(_empty_staging, self.workspace / STAGING)
            lock.close()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _empty_staging(staging: Path) -> None:
    """The copies were sent (or the checkpoint failed): they are not kept."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(staging):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


async def keep_checkpointing(
    checkpointer: Checkpointer,
    name: str,
    interval: float,
    ready: Callable[[], bool],
    exclusive: trio.Lock,
) -> None:
    """Every ``interval`` seconds, a checkpoint to ``name`` if anything changed; none while
    the mount is not ready (nothing to take yet), none during a refresh (``exclusive``). A
    failure is logged once until it changes or a checkpoint succeeds (a tier down for a day
    is one line, not one per interval)."""
    told = ""
    while True:
        await trio.sleep(interval)
        if not ready():
            continue
        async with exclusive:
            failure = await checkpoint_quietly(checkpointer, name, "periodic", told)
        if told and not failure:
            log.info("periodic checkpoint %s: works again", name)
        told = failure


async def checkpoint_quietly(
    checkpointer: Checkpointer, name: str, why: str, told: str = ""
) -> str:
    """A checkpoint whose failure is logged (unless it is ``told`` already), not raised: the
    periodic ones, the one at a stop. Returns the failure ("" for none)."""
    try:
        done = await checkpointer.take(name, only_if_changed=True)
    except CheckpointFailed as exc:
        if str(exc) != told:
            log.error("%s checkpoint: %s", why, exc)
        return str(exc)
    except Exception:  # an unexpected failure costs this checkpoint, never the mount
        log.exception("%s checkpoint of %s failed", why, name)
        return "internal error (see the log)"
    if not done.unchanged:
        log.info(
            "%s checkpoint %s: manifest %s, %d object(s) sent (%d bytes)",
            why, name, done.manifest[:12], done.sent, done.sent_bytes,
        )  # fmt: skip
    return ""
