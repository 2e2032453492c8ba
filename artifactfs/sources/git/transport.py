"""Build dulwich clients for a source, and turn their failures into one readable line.

Every remote call is blocking and runs in a worker thread. Local repositories are served by
``git upload-pack`` in a subprocess (not dulwich's in-process client) so that every transport
speaks the same protocol v2 with blob filters and ``object-info``: the subprocess gets them
through ``GIT_PROTOCOL`` and ``-c`` settings, whatever the repository's own configuration.

http(s) remotes get credentials from a ``CredentialProvider`` each time a client is opened (a
prepare, an ``object-info`` query, every blob fetch), so a fetch hours after the first prepare
authenticates with the token as it is then. How dulwich keeps them (checked against dulwich
1.2): the token becomes a basic-auth header computed once per client, sent on every request
(no extra round trip for a 401 challenge), and only to the origin (scheme, host, port) of the
source URL; a redirect elsewhere does not carry it (dulwich checks the origin, urllib3 strips
``Authorization`` on cross-host redirects). It is not in the URLs dulwich builds, so neither its
exceptions (``unexpected http resp ... for <url>``, urllib3 errors) nor urllib3's debug log
(method, path, status) can contain it. We still classify HTTP error statuses ourselves
(``HttpStatusError``) so that a refusal reads as one line that names authentication.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from dulwich.client import (
    GitClient,
    HTTPUnauthorized,
    SubprocessGitClient,
    Urllib3HttpGitClient,
    get_transport_and_path,
)
from dulwich.errors import (
    ApplyDeltaError,
    ChecksumMismatch,
    FileFormatException,
    GitProtocolError,
    HangupException,
    WrongObjectException,
)
from urllib3 import PoolManager, Retry
from urllib3.exceptions import HTTPError, MaxRetryError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

from ...redact import mask_userinfo
from ..credentials import TOKEN_ENV, TOKEN_FILE_ENV, CredentialProvider
from .spec import GitSourceSpec

if TYPE_CHECKING:
    from dulwich.client import HTTPResponse

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


class HttpStatusError(Exception):
    """An http(s) git server answered with an error status.

    It carries the status and nothing else (no URL, no headers), so nothing secret can travel
    in it into a message or a log.
    """

    def __init__(self, status: int) -> None:
        super().__init__(f"the server answered HTTP {status}")
        self.status = status


class HttpClient(Urllib3HttpGitClient):
    """dulwich's urllib3 client, with error statuses raised as ``HttpStatusError``.

    dulwich raises ``NotGitRepository`` for a 404 and a ``GitProtocolError`` naming the URL for a
    403; we want one class that says which status it was, and a 403 (what many hosts answer for
    a token without access) read as an authentication failure like a 401.
    """

    def _http_request(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        data: bytes | Iterator[bytes] | None = None,
        raise_for_status: bool = True,
    ) -> tuple[HTTPResponse, Callable[[int], bytes]]:
        response, read = super()._http_request(url, headers, data, raise_for_status=False)
        if raise_for_status and response.status != 200:
            response.close()
            raise HttpStatusError(response.status)
        return response, read


_BATCH_SSH = (
    "ssh -o BatchMode=yes -o ConnectTimeout=20 -o ServerAliveInterval=15 -o ServerAliveCountMax=4"
)

REMOTE_FAILURES = (
    OSError,
    HttpStatusError,
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


def open_client(
    spec: GitSourceSpec, credentials: CredentialProvider | None = None
) -> tuple[GitClient, str]:
    """A fresh client (dulwich clients keep per-connection state) and the remote path.

    ``credentials`` is asked for a token now (it may re-read a token file, and raise
    ``SourceError`` if that fails), for http and https only: git://, ssh and local remotes
    never see it. A password in the URL itself wins, as it does for git; a username in the URL
    is sent with the provider's token.

    ssh honours ``GIT_SSH_COMMAND`` and ``GIT_SSH`` as git does; without them it runs ssh in
    batch mode (a mount has nobody to answer a prompt) with a connect timeout and keep-alives,
    since a pipe, unlike a socket, has no timeout of its own.
    """
    if spec.transport == "file":
        return LocalUploadPackClient(thin_packs=False, quiet=True), spec.url
    if spec.transport in ("http", "https"):
        return _http_client(spec, credentials)
    ssh_command = None
    if spec.transport == "ssh":
        ssh_command = os.environ.get("GIT_SSH_COMMAND") or os.environ.get("GIT_SSH") or _BATCH_SSH
    client, path = get_transport_and_path(
        spec.url, thin_packs=False, quiet=True, ssh_command=ssh_command
    )
    return client, path


def _http_client(
    spec: GitSourceSpec, credentials: CredentialProvider | None
) -> tuple[GitClient, str]:
    parsed = urlparse(spec.url)
    username = password = None
    if credentials is not None and parsed.password is None:
        found = credentials.credentials()
        if found is not None:
            username = unquote(parsed.username) if parsed.username else found.username
            password = found.token
    # with username None, dulwich takes whatever userinfo the URL has
    client = HttpClient.from_parsedurl(
        parsed, thin_packs=False, quiet=True, username=username, password=password
    )
    assert isinstance(client, HttpClient)
    if isinstance(client.pool_manager, PoolManager):  # a ProxyManager is one too
        client.pool_manager.connection_pool_kw["retries"] = _HTTP_RETRIES
    return client, parsed.path


_HTTP_RETRIES = Retry(total=3, read=0)
"""urllib3 retries a GET that timed out three times by default, so a silent server would cost
four times ``--io-timeout``; a read that timed out fails at once, as on the other transports.
Failed connections are still retried. (Redirects keep urllib3's rule of dropping the
``Authorization`` header when they leave the host.)"""


def is_unreachable(exc: BaseException) -> bool:
    """Whether the origin could not be reached at all (a connection refused, reset or timed
    out; a server error), as opposed to an answer: a refusal, an unknown repository or ref.
    Only then may a shared tier stand in for it (remote.py)."""
    if isinstance(exc, HttpStatusError):
        return exc.status >= 500
    return isinstance(exc, OSError | HangupException | MaxRetryError | Urllib3TimeoutError)


def is_auth_failure(exc: BaseException) -> bool:
    """Whether the server refused us for want of (valid) credentials: 401 or 403."""
    if isinstance(exc, HttpStatusError):
        return exc.status in (401, 403)
    return isinstance(exc, HTTPUnauthorized)


def credentials_note(spec: GitSourceSpec, credentials: CredentialProvider | None) -> str:
    """What we sent, for a message about a refusal: never the secret, only where it came from."""
    if urlparse(spec.url).password is not None:
        return "sent the password in the source URL"
    origin = credentials.origin if credentials is not None else None
    if origin is None:
        return f"no token was given (set {TOKEN_ENV} or {TOKEN_FILE_ENV})"
    return f"sent the token from {origin}"


def describe_failure(exc: BaseException) -> str:
    """One line for a failed remote call, without credentials or tracebacks."""
    return mask_userinfo(_describe(exc))


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, GitProtocolError) and isinstance(cause, OSError | HTTPError):
        return _describe(cause)  # dulwich wraps socket and urllib3 errors: the cause says more
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        return _describe(exc.reason)  # urllib3 gave up retrying: the last reason says why
    if isinstance(exc, HTTPError) and isinstance(cause, OSError):
        return _describe(cause)  # a failed http connection: the socket error says what failed
    if isinstance(exc, Urllib3TimeoutError):
        return "timed out waiting for the server"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "timed out waiting for the server"
    if isinstance(exc, HTTPUnauthorized):
        return "authentication required or refused by the server (401)"
    if isinstance(exc, HttpStatusError):
        return _HTTP_STATUSES.get(exc.status, "the server answered HTTP {}").format(exc.status)
    if isinstance(exc, HangupException):
        lines = [_clean(line) for line in (exc.stderr_lines or []) if line.strip()]
        detail = "; ".join(lines) if lines else "does the repository exist?"
        return f"the server closed the connection ({detail})"
    if isinstance(exc, GitProtocolError):
        return f"git protocol error: {_first_line(str(exc))}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"{type(exc).__name__}: {_first_line(str(exc))}"


_HTTP_STATUSES = {
    401: "authentication required or refused by the server ({})",
    403: "authentication required or refused by the server ({})",
    404: "repository not found ({}): no such repository, or not visible to these credentials",
    407: "the HTTP proxy requires authentication ({})",
}


def _clean(line: Any) -> str:
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else str(line)
    return text.strip().removeprefix("fatal: ")[:200]


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:300]
