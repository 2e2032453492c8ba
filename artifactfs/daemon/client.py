"""The CLI's side of the daemon socket: send one request, show progress, return the answer."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from ..errors import UserError
from ..home import ArtifactHome
from ..ipc import Message, ProtocolError, request_blocking

Progress = Callable[[dict[str, Any]], None]


def call(home: ArtifactHome, message: Message, progress: Progress | None = None) -> Message:
    """Ask the daemon; return its final answer, or raise UserError with its one-line reason."""
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
        raise _not_running(home) from None
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
            raise _not_running(home) from None
        raise UserError(f"cannot talk to the daemon: {exc.strerror}") from None
    except ProtocolError as exc:
        raise UserError(f"the daemon answered badly: {exc}") from None
    raise UserError("the daemon closed the connection without an answer (did it stop?)")


def _not_running(home: ArtifactHome) -> UserError:
    return UserError(
        f"no artifactfs daemon is running for {home.root}; start one with: artifactfs daemon"
    )
