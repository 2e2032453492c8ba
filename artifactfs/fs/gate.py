"""The ready gate: user-facing operations wait here until the snapshot is prepared.

A mount appears at once as a placeholder; prepare runs in the background. The gate holds
``preparing | ready | failed(reason)``: ``wait()`` returns once ready, raises ``FUSEError(EIO)``
at once when failed, and ``reset()`` re-arms it for a retry, so waiters block again until
the retry settles.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable

import pyfuse3
import trio


class GateState(enum.Enum):
    PREPARING = "preparing"
    READY = "ready"
    FAILED = "failed"


class ReadyGate:
    def __init__(self) -> None:
        self._state = GateState.PREPARING
        self._error: str | None = None
        self._settled = trio.Event()
        self.on_change: Callable[[], None] = lambda: None
        """Called after every state change (the mount's watchers hook in here)."""

    @property
    def state(self) -> GateState:
        return self._state

    @property
    def error(self) -> str | None:
        """The one-line reason of the last failure, or None unless failed."""
        return self._error

    def open(self) -> None:
        self._state = GateState.READY
        self._error = None
        self._settled.set()
        self.on_change()

    def fail(self, reason: str) -> None:
        self._state = GateState.FAILED
        self._error = reason
        self._settled.set()
        self.on_change()

    def reset(self) -> None:
        """Re-arm for another prepare: new waiters block until it settles."""
        if self._state is GateState.PREPARING:
            return
        self._state = GateState.PREPARING
        self._error = None
        self._settled = trio.Event()
        self.on_change()

    async def wait(self) -> None:
        """Return once ready; raise ``FUSEError(EIO)`` if prepare failed.

        Cancellation: safe to cancel; nothing is held while waiting.
        """
        while True:
            if self._state is GateState.READY:
                return
            if self._state is GateState.FAILED:
                raise pyfuse3.FUSEError(errno.EIO)
            await self._settled.wait()
