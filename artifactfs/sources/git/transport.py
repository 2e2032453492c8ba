"""Build dulwich clients for a source, and turn their failures into one readable line.

Every remote call is blocking and runs in a worker thread. Local repositories are served by
``git upload-pack`` in a subprocess (not dulwich's in-process client) so that every transport
speaks the same protocol v2 with blob filters and ``object-info``: the subprocess gets them
through ``GIT_PROTOCOL`` and ``-c`` settings, whatever the repository's own configuration.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from dulwich.client import GitClient, HTTPUnauthorized, SubprocessGitClient, get_transport_and_path
from dulwich.errors import (
    ApplyDeltaError,
    ChecksumMismatch,
    FileFormatException,
    GitProtocolError,
    HangupException,
    WrongObjectException,
)
from urllib3.exceptions import HTTPError

from ...redact import mask_userinfo
from ..spec import GitSourceSpec

_LOCAL_UPLOAD_PACK = [
    "env",
    "GIT_PROTOCOL=version=2",
    "git",
    "-c",
    "uploadpack.allowFilter=true",
    "-c",
    "uploadpack.allowAnySHA1InWant=true",
    "-c",
    "transfer.advertiseObjectInfo=true",
]


class LocalUploadPackClient(SubprocessGitClient):
    """``git upload-pack`` on a local repository, speaking protocol v2 with filters enabled."""

    git_command = _LOCAL_UPLOAD_PACK


_BATCH_SSH = (
    "ssh -o BatchMode=yes -o ConnectTimeout=20 -o ServerAliveInterval=15 -o ServerAliveCountMax=4"
)

REMOTE_FAILURES = (
    OSError,
    GitProtocolError,
    HTTPUnauthorized,
    HTTPError,
    ChecksumMismatch,
    ApplyDeltaError,
    FileFormatException,
    WrongObjectException,
)
"""What a remote call raises when the origin, the network or the data it sent is at fault.
Anything else is a bug of ours and keeps its traceback."""


def open_client(spec: GitSourceSpec) -> tuple[GitClient, str]:
    """A fresh client (dulwich clients keep per-connection state) and the remote path.

    ssh honours ``GIT_SSH_COMMAND`` and ``GIT_SSH`` as git does; without them it runs ssh in
    batch mode (a mount has nobody to answer a prompt) with a connect timeout and keep-alives,
    since a pipe, unlike a socket, has no timeout of its own.
    """
    if spec.transport == "file":
        return LocalUploadPackClient(thin_packs=False, quiet=True), spec.url
    ssh_command = None
    if spec.transport == "ssh":
        ssh_command = os.environ.get("GIT_SSH_COMMAND") or os.environ.get("GIT_SSH") or _BATCH_SSH
    client, path = get_transport_and_path(
        spec.url, thin_packs=False, quiet=True, ssh_command=ssh_command
    )
    return client, path


def describe_failure(exc: BaseException) -> str:
    """One line for a failed remote call, without credentials or tracebacks."""
    return mask_userinfo(_describe(exc))


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, GitProtocolError) and isinstance(cause, OSError):
        return _describe(cause)  # dulwich wraps socket errors: the cause says more
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "timed out waiting for the server"
    if isinstance(exc, HTTPUnauthorized):
        return "authentication required or refused by the server"
    if isinstance(exc, HangupException):
        lines = [_clean(line) for line in (exc.stderr_lines or []) if line.strip()]
        detail = "; ".join(lines) if lines else "does the repository exist?"
        return f"the server closed the connection ({detail})"
    if isinstance(exc, GitProtocolError):
        return f"git protocol error: {_first_line(str(exc))}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"{type(exc).__name__}: {_first_line(str(exc))}"


def _clean(line: Any) -> str:
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else str(line)
    return text.strip().removeprefix("fatal: ")[:200]


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:300]
