"""Wait for a condition with a deadline, instead of sleeping and hoping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Timeout(AssertionError):
    pass


def wait_for(
    condition: Callable[[], T],
    timeout: float = 20.0,
    what: str = "condition",
    interval: float = 0.01,
    while_alive: Callable[[], None] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy; return that value.

    ``while_alive`` is called on every round and should raise if whatever we wait on has died,
    so a crash fails the test at once instead of at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        if while_alive is not None:
            while_alive()
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
