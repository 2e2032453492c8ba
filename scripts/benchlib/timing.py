"""Timing a process to its exit without rounding: ``Popen.wait(timeout)`` polls, sleeping up
to 50 ms between checks, which would put every measured time on a 50 ms grid; here the wait
is a blocking ``waitpid`` and a timer thread enforces the timeout."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any

from tests.helpers.mounts import stop_process

from .cli import BenchError

RUN_TIMEOUT = 900.0


def wait_exactly(process: subprocess.Popen[Any], timeout: float) -> tuple[int | None, float]:
    """Wait for ``process`` in a blocking ``waitpid``; return its exit status (None if it ran
    over ``timeout`` and was killed) and the ``perf_counter`` at which the wait returned."""
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        process.kill()

    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        code = process.wait()
        at = time.perf_counter()
    finally:
        watchdog.cancel()
    return (None if expired.is_set() else code), at


def run_timed(
    command: Sequence[str], what: str, timeout: float = RUN_TIMEOUT, **popen: Any
) -> tuple[float, float]:
    """Run ``command`` to its end; its spawn and exit as ``perf_counter`` values. A non-zero
    exit (grep's 1, no match, included) or a run over ``timeout`` is a BenchError."""
    started = time.perf_counter()
    process = subprocess.Popen(command, **popen)
    try:
        code, ended = wait_exactly(process, timeout)
    finally:
        stop_process(process)  # reaped already, unless interrupted
    if code is None:
        raise BenchError(f"{what} took over {timeout:.0f} s")
    if code != 0:
        raise BenchError(f"{what} exited with {code}")
    return started, ended
