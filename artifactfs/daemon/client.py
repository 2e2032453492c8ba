"""The CLI's side of the daemon socket: send one request, show progress, return the answer.

A daemon that is starting holds its lock (``run/daemon.lock``) before its socket exists, so a
script that runs ``artifactfs daemon &`` and then ``artifactfs add-repo ...`` at once finds no
socket yet. A client that finds none, while the lock is held, waits for the socket (at most
``START_WAIT_SECONDS``) instead of saying no daemon is running. The lock is looked up in
``/proc/locks`` rather than tried: taking it, even for a moment, could make the starting daemon
believe another one runs.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..home import ArtifactHome, default_home
from ..ipc import Message, ProtocolError, request_blocking

Progress = Callable[[dict[str, Any]], None]


START_WAIT_SECONDS = 15.0
POLL_SECONDS = 0.02


def call(home: ArtifactHome, message: Message, progress: Progress | None = None) -> Message:
    """Ask the daemon; return its final answer, or raise UserError with its one-line reason.
    A daemon that is starting is waited for."""
    deadline = time.monotonic() + START_WAIT_SECONDS
    while True:
        try:
            return _call(home, message, progress)
        except _NotListening:
            if time.monotonic() > deadline or not _starting(home):
                raise _not_running(home) from None
            time.sleep(POLL_SECONDS)  # starting: its socket comes once it serves


class _NotListening(Exception):
    """Nothing accepts connections on the socket (nothing was sent)."""


def _call(home: ArtifactHome, message: Message, progress: Progress | None) -> Message:
    try:
        for answer in request_blocking(str(home.daemon_socket), message):
            if "progress" in answer:
                if progress is not None:
                    progress(answer["progress"])
                continue
            if answer.get("ok"):
                return answer
            raise UserError(str(answer.get("error") or "the daemon refused the request"))
    except (FileNotFoundError, ConnectionRefusedError):
        raise _NotListening from None
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
            raise _NotListening from None
        raise UserError(f"cannot talk to the daemon: {exc.strerror}") from None
    except ProtocolError as exc:
        raise UserError(f"the daemon answered badly: {exc}") from None
    raise UserError("the daemon closed the connection without an answer (did it stop?)")


def _not_running(home: ArtifactHome) -> UserError:
    return UserError(
        f"no artifactfs daemon is running for {home.root}; start one with: artifactfs daemon"
    )


def _starting(home: ArtifactHome) -> bool:
    """A daemon of this home holds its lock, or is a process that has not taken it yet."""
    return daemon_lock_held(home.daemon_lock) or _daemon_process_of(home.root)


def _daemon_process_of(root: Path) -> bool:
    """Whether a process of ours runs ``artifactfs daemon`` for the state home ``root`` (the
    moments before it takes its lock; only processes we may read the environment of)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"daemon" not in argv or not any(a.endswith(b"artifactfs") for a in argv):
                continue
            pairs = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        environ = dict(
            pair.decode(errors="replace").split("=", 1) for pair in pairs if b"=" in pair
        )
        try:
            if default_home(environ) == root:
                return True
        except UserError:
            continue
    return False


def daemon_lock_held(lock: Path) -> bool:
    """Whether some process holds an ``flock`` on the daemon's lock file (read-only check)."""
    try:
        st = os.stat(lock)
        with open("/proc/locks") as table:
            held = table.read()
    except OSError:
        return False
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
    return any(line.split()[1:2] == ["FLOCK"] and key in line for line in held.splitlines())
