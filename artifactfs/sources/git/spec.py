"""What a git SOURCE may look like: a URL (git://, http(s)://, ssh://, file://), scp-like
``[user@]host:path``, or a local repository path."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from ...errors import UserError
from ..credentials import TOKEN_ENV
from ..spec import URL_SCHEME, redact_url

GitTransport = Literal["git", "http", "https", "ssh", "file"]

_SCHEMES: dict[str, GitTransport] = {
    "git": "git",
    "http": "http",
    "https": "https",
    "ssh": "ssh",
    "git+ssh": "ssh",
    "ssh+git": "ssh",
    "file": "file",
}
_BAD_NAME = re.compile(r"[\x00-\x20\x7f]")
# scp-like ssh syntax: [user@]host:path, with no slash before the colon
_SCP = re.compile(
    r"^(?:(?P<user>[^@/\s]+)@)?(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*):(?P<path>[^/].*|/.+)$"
)


@dataclass(frozen=True)
class GitSourceSpec:
    transport: GitTransport
    url: str
    """What the transport is given (for local repositories, an absolute path)."""
    display: str
    """The same with any password replaced by ``***``; safe to log and show."""

    @property
    def kind(self) -> str:
        return "git"

    def with_ref(self, ref: str | None) -> GitSourceSpec:
        return self  # a git SOURCE names no ref: --ref travels beside it

    def at_commit(self, commit: str) -> GitSourceSpec:
        return self  # the commit travels beside it, as --ref

    def shown_ref(self, ref: str | None) -> str:
        return ref or "HEAD"

    @property
    def token_variable(self) -> str:
        return TOKEN_ENV


def parse_git_source(text: str) -> GitSourceSpec | None:
    """A git source, or None for a URL scheme git does not speak; ``UserError`` if malformed."""
    match = URL_SCHEME.match(text)
    if match:
        transport = _SCHEMES.get(match["scheme"].lower())
        return None if transport is None else _parse_url(text, transport)
    scp = _SCP.match(text)
    if scp and not Path(text).exists():
        _check_remote_names(text, scp["host"], scp["user"])
        return GitSourceSpec("ssh", text, text)
    return _local_repository(Path(text))


def _parse_url(text: str, transport: GitTransport) -> GitSourceSpec:
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError as exc:
        raise UserError(f"malformed source URL {redact_url(text)!r}: {exc}") from None
    if transport == "file":
        if parts.netloc not in ("", "localhost"):
            raise UserError(f"file:// URLs name a local path, not a host: {text!r}")
        return _local_repository(Path(parts.path), display=text)
    if not parts.hostname:
        raise UserError(f"malformed source URL {redact_url(text)!r}: no host")
    _check_remote_names(redact_url(text), parts.hostname, parts.username)
    if parts.path in ("", "/"):
        raise UserError(f"malformed source URL {redact_url(text)!r}: no repository path")
    if parts.query or parts.fragment:
        raise UserError(
            f"malformed source URL {redact_url(text)!r}: unexpected ?query or #fragment"
        )
    url = _normalise(parts)
    return GitSourceSpec(transport, url, redact_url(url))


def _check_remote_names(shown: str, host: str, user: str | None) -> None:
    """Refuse a host or user name that a transport could read as something else: one that
    starts with ``-`` would be an option to ssh (``-oProxyCommand=...`` runs a command), and
    whitespace or control characters (percent-encoded ones too) have no place in either."""
    for what, name in (("host", host), ("user", user)):
        if name is None:
            continue
        decoded = unquote(name)
        if decoded.startswith("-") or _BAD_NAME.search(decoded):
            named = f" {name[:40]!r}" if what == "host" else ""  # a user name may be a token
            raise UserError(
                f"refusing source {shown!r}: its {what} name{named} starts with '-' or holds"
                " spaces or control characters"
            )


def _normalise(parts: SplitResult) -> str:
    return urlunsplit(parts._replace(scheme=parts.scheme.lower()))


def _local_repository(path: Path, display: str | None = None) -> GitSourceSpec:
    try:
        absolute = path.expanduser().absolute()
    except RuntimeError:  # ~name of no such user
        raise UserError(f"no git repository at {str(path)!r}: no such user's home") from None
    if not absolute.is_dir():
        raise UserError(f"no git repository at {str(absolute)!r}: not a directory")
    is_bare = (absolute / "objects").is_dir() and (absolute / "HEAD").is_file()
    if not is_bare and not (absolute / ".git").exists():
        raise UserError(f"no git repository at {str(absolute)!r}")
    return GitSourceSpec("file", str(absolute), display or str(absolute))
