"""Credentials for private http(s) git remotes: where the token comes from, and keeping it hidden.

A token is the password of HTTP basic auth, which is what git hosts accept for tokens (GitHub,
GitLab, Gitea, Bitbucket, Azure DevOps). It is never written anywhere by us, never put in argv,
and never appears in a ``repr``, a ``str``, an exception message or a log line.

Where the token comes from, first match wins:

1. an explicit token given to ``CredentialProvider(token=...)`` (the daemon passes one it
   received over a private channel);
2. a token file: ``CredentialProvider(token_file=...)``, else the path in
   ``$ARTIFACTFS_GIT_TOKEN_FILE``. The file is **read each time** a connection is opened, so a
   rotated token (a Kubernetes secret, a CI token refreshed by a sidecar) is picked up by the
   next fetch without restarting the mount. Surrounding whitespace is stripped;
3. ``$ARTIFACTFS_GIT_TOKEN``.

None of these: no token, and a private remote answers 401 (the error says so).

The username sent with the token is the one in the source URL if it has one, else
``username=...``, else ``$ARTIFACTFS_GIT_USERNAME``, else ``x-access-token`` (what GitHub wants
for app and fine-grained tokens; GitLab and Gitea accept any username with a personal token).
The transport applies the URL rule, so a ``Credentials`` never holds a URL's username, which
may itself be a token (``https://TOKEN@host/...``).

The environment is read once, when the provider is made, so the worker may drop the variables
from its environment afterwards (its ssh and ``git upload-pack`` children then never see them).

Errors: a token file that is missing, unreadable, empty, huge or not one line of text raises
``SourceError`` from ``credentials()``: it is found while talking to the origin (a prepare, or a
blob fetch hours later after a botched rotation), and there a ``SourceError`` becomes one clear
line (a failed prepare, or EIO with a log line) where any other exception would be an internal
error with a traceback. ``check()`` raises the same message as a ``UserError``, for a command line
that wants to refuse bad input before it mounts anything.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import SourceError, UserError

TOKEN_ENV = "ARTIFACTFS_GIT_TOKEN"
"""A token for http(s) git remotes."""
TOKEN_FILE_ENV = "ARTIFACTFS_GIT_TOKEN_FILE"
"""The path of a file holding a token for http(s) git remotes (re-read at each connection)."""
USERNAME_ENV = "ARTIFACTFS_GIT_USERNAME"
"""The username sent with the token when the source URL names none."""
DEFAULT_USERNAME = "x-access-token"

MAX_TOKEN_BYTES = 16 * 1024
"""Real tokens are well under 2 KiB (JWTs included); a bigger file is the wrong file."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, repr=False)
class Credentials:
    """A username and a token for HTTP basic auth. Never shows the token."""

    username: str
    token: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, token='***')"

    __str__ = __repr__


class CredentialProvider:
    """Hands out the current credentials for an http(s) remote; see the module docstring.

    Make one per mount; the transport calls ``credentials()`` each time it opens a connection.
    Safe to share between threads (it holds no mutable state; the file is read afresh).
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        username: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``environ`` defaults to ``os.environ``; pass ``{}`` to ignore the environment."""
        env = os.environ if environ is None else environ
        if token is not None:
            token = _checked(token.strip(), "the token given", error=UserError)
        if token_file is None and env.get(TOKEN_FILE_ENV):
            token_file = env[TOKEN_FILE_ENV]
        env_token = (env.get(TOKEN_ENV) or "").strip() or None  # empty means unset
        if env_token is not None:
            env_token = _checked(env_token, f"${TOKEN_ENV}", error=UserError)
        self._given = token is not None or token_file is not None
        """A token or token file was handed to us on purpose, not found in the environment."""
        self._token = token
        self._token_file = Path(token_file) if token_file is not None else None
        self._env_token = env_token
        self._username = _checked_username(username or env.get(USERNAME_ENV) or DEFAULT_USERNAME)

    @classmethod
    def none(cls) -> CredentialProvider:
        """A provider that never has a token (the environment is ignored)."""
        return cls(environ={})

    def handover(self) -> dict[str, str | None]:
        """What a child process of ours needs to make the same provider (``from_handover``).
        It holds the token: send it over a pipe, never in argv, the environment or a file."""
        return {
            "token": self._token,
            "token_file": None if self._token_file is None else str(self._token_file),
            "env_token": self._env_token,
            "username": self._username,
        }

    @classmethod
    def from_handover(cls, handed: Mapping[str, str | None]) -> CredentialProvider:
        env_token = handed.get("env_token")
        return cls(
            token=handed.get("token"),
            token_file=handed.get("token_file"),
            username=handed.get("username"),
            environ={TOKEN_ENV: env_token} if env_token else {},
        )

    @property
    def origin(self) -> str | None:
        """Where the token comes from, safe to show ("the token file /run/x"), or None."""
        if self._token is not None:
            return "the token given"
        if self._token_file is not None:
            return f"the token file {self._token_file}"
        if self._env_token is not None:
            return f"${TOKEN_ENV}"
        return None

    def credentials(self) -> Credentials | None:
        """The credentials to send now, or None if there is no token (blocking: may read a
        file). The transport replaces the username by the source URL's, if it has one."""
        token = self._current_token()
        return None if token is None else Credentials(self._username, token)

    def given_token(self) -> str | None:
        """The token handed to us on purpose (explicitly, or by a token file named on the
        command line), or None: a source with a credential system of its own (the Hub's
        ``HF_TOKEN``) then uses that (blocking: may read a file; raises ``SourceError``)."""
        return self._current_token() if self._given else None

    def check(self) -> None:
        """Raise ``UserError`` now if the token cannot be had (for up-front validation)."""
        try:
            self._current_token()
        except SourceError as exc:
            raise UserError(str(exc)) from None

    def _current_token(self) -> str | None:
        if self._token is not None:
            return self._token
        if self._token_file is not None:
            return _read_token_file(self._token_file)
        return self._env_token

    def __repr__(self) -> str:
        return f"CredentialProvider(username={self._username!r}, token from {self.origin})"


def _read_token_file(path: Path) -> str:
    """Read a token file without ever blocking: a FIFO or a device is refused, not waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
        raise SourceError(f"cannot read the token file {path}: {reason}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SourceError(f"the token file {path} is not a regular file")
        data = os.read(fd, MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
        raise SourceError(f"cannot read the token file {path}: {reason}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_BYTES:
        raise SourceError(f"the token file {path} is too large to hold a token")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SourceError(f"the token file {path} is not text") from None
    return _checked(text, f"the token file {path}")


def _checked(token: str, origin: str, error: type[Exception] = SourceError) -> str:
    """``token`` if it is usable; the message names where it came from, never the token."""
    if not token:
        raise error(f"{origin} is empty")
    if _CONTROL.search(token):
        raise error(f"{origin} holds more than one line or control characters")
    return token


def _checked_username(username: str) -> str:
    """Basic auth joins "username:password": a colon would move part of the username into the
    password (RFC 7617 forbids it)."""
    if ":" in username or _CONTROL.search(username):
        raise UserError(f"not a valid username for a git remote: {username!r}")
    return username
