"""Parse the SOURCE argument a user typed into a validated source description.

Checked before anything is mounted, so a malformed SOURCE costs one clear line and nothing
else. Credentials in a URL are kept for the transport but never shown: ``display`` is what
logs, xattrs and messages use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, urlsplit, urlunsplit

from ..errors import UserError
from ..redact import mask_userinfo

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
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
# scp-like ssh syntax: [user@]host:path, with no slash before the colon
_SCP = re.compile(
    r"^(?:(?P<user>[^@/\s]+)@)?(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*):(?P<path>[^/].*|/.+)$"
)
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True)
class GitSourceSpec:
    transport: GitTransport
    url: str
    """What the transport is given (for local repositories, an absolute path)."""
    display: str
    """The same with any password replaced by ``***``; safe to log and show."""

    kind = "git"


HubRepoType = Literal["model", "dataset", "space"]

_HUB_PREFIXES: dict[str, HubRepoType] = {
    "models/": "model",
    "datasets/": "dataset",
    "spaces/": "space",
}
# the Hub's own rule: letters, digits, "-", "_", "."; no "--" or ".."; at most 96 characters
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HUB_REPO_ID = re.compile(rf"(?:{_HUB_PART}/)?{_HUB_PART}")


@dataclass(frozen=True)
class HubSourceSpec:
    """``hf://[datasets/|spaces/]org/name[@revision]``: a Hugging Face Hub repository."""

    repo_type: HubRepoType
    repo_id: str
    revision: str | None
    """As typed (a branch, tag or commit); None means ``main``. Pinned to a commit at prepare."""

    kind = "hub"

    @property
    def url(self) -> str:
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        at = f"@{self.revision}" if self.revision else ""
        return f"hf://{prefix}{self.repo_id}{at}"

    @property
    def display(self) -> str:
        return self.url


SourceSpec = GitSourceSpec | HubSourceSpec


def redact_url(url: str) -> str:
    """``url`` with the password (or a lone token) in its userinfo replaced by ``***``."""
    match = _URL.match(url)
    if not match:
        return url
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:  # malformed: mask anything that looks like userinfo
        return mask_userinfo(url)
    if parts.password is None and not (parts.username and match["scheme"] in ("http", "https")):
        return url
    user = parts.username or ""
    # https://TOKEN@host: over http a bare username is usually a token
    userinfo = f"{user}:***" if parts.password is not None else "***"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def parse_source(text: str) -> SourceSpec:
    """Validate a SOURCE argument; raise ``UserError`` with one line if it is unusable."""
    if not text or _CONTROL.search(text):
        raise UserError(
            f"not a valid source: {text!r} (empty, or contains spaces or control characters)"
        )
    match = _URL.match(text)
    if match:
        scheme = match["scheme"].lower()
        if scheme == "hf":
            return _parse_hub(text[match.end() :], text)
        transport = _SCHEMES.get(scheme)
        if transport is None:
            raise UserError(
                f"unsupported source scheme {scheme + '://'!r} in {redact_url(text)!r}"
                " (use git://, http(s)://, ssh://, file:// or a local path)"
            )
        return _parse_url(text, transport)
    scp = _SCP.match(text)
    if scp and not Path(text).exists():
        return GitSourceSpec("ssh", text, text)
    return _local_repository(Path(text))


def _parse_hub(rest: str, text: str) -> HubSourceSpec:
    repo_type: HubRepoType = "model"
    for prefix, kind in _HUB_PREFIXES.items():
        if rest.startswith(prefix):
            repo_type, rest = kind, rest[len(prefix) :]
            break
    repo_id, at, revision = rest.partition("@")
    if not _HUB_REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
        raise UserError(
            f"not a Hugging Face repository: {text!r} (use hf://org/name[@revision], "
            "hf://datasets/org/name or hf://spaces/org/name)"
        )
    if at and not revision:
        raise UserError(f"empty revision after '@' in {text!r}")
    return HubSourceSpec(repo_type, repo_id, check_ref(revision) if at else None)


def with_ref(spec: SourceSpec, ref: str | None) -> SourceSpec:
    """Apply ``--ref``: for a Hub source it is the revision (given once, not twice)."""
    if ref is None or not isinstance(spec, HubSourceSpec):
        return spec
    if spec.revision is not None and spec.revision != ref:
        raise UserError(f"{spec.url} already names a revision; drop --ref {ref}")
    return HubSourceSpec(spec.repo_type, spec.repo_id, ref)


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
    if parts.path in ("", "/"):
        raise UserError(f"malformed source URL {redact_url(text)!r}: no repository path")
    if parts.query or parts.fragment:
        raise UserError(
            f"malformed source URL {redact_url(text)!r}: unexpected ?query or #fragment"
        )
    url = _normalise(parts)
    return GitSourceSpec(transport, url, redact_url(url))


def _normalise(parts: SplitResult) -> str:
    return urlunsplit(parts._replace(scheme=parts.scheme.lower()))


def _local_repository(path: Path, display: str | None = None) -> GitSourceSpec:
    absolute = path.expanduser().absolute()
    if not absolute.is_dir():
        raise UserError(f"no git repository at {str(absolute)!r}: not a directory")
    is_bare = (absolute / "objects").is_dir() and (absolute / "HEAD").is_file()
    if not is_bare and not (absolute / ".git").exists():
        raise UserError(f"no git repository at {str(absolute)!r}")
    return GitSourceSpec("file", str(absolute), display or str(absolute))


_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|^[-/.]|[/.]$|\.lock$")


def check_ref(ref: str | None) -> str | None:
    """Validate a ``--ref`` value by git's ref-name rules (a commit id also passes)."""
    if ref is None:
        return None
    if not ref or len(ref) > 255 or _BAD_REF.search(ref):
        raise UserError(f"not a valid ref name: {ref!r}")
    return ref
