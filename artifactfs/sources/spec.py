"""Rules every SOURCE and ``--ref`` obeys, whatever the kind of source.

Checked before anything is mounted, so a malformed SOURCE costs one clear line and nothing
else. Credentials in a URL are kept for the transport but never shown: ``redact_url`` gives
what logs, xattrs and messages use. Each kind parses its own syntax (``git/spec.py``,
``hub/spec.py``); ``registry.py`` asks them in turn.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from ..errors import UserError
from ..redact import mask_userinfo

URL_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
"""A SOURCE that starts like a URL: its scheme picks the kind."""
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def check_source_text(text: str) -> None:
    """Refuse a SOURCE no kind could mean: empty, or with spaces or control characters."""
    if not text or _CONTROL.search(text):
        raise UserError(
            f"not a valid source: {text!r} (empty, or contains spaces or control characters)"
        )


def redact_url(url: str) -> str:
    """``url`` with the password (or a lone token) in its userinfo replaced by ``***``."""
    match = URL_SCHEME.match(url)
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


def strip_credentials(url: str) -> str:
    """``url`` with no credentials at all, for places another program reads it and keeps it
    (a git directory's ``remote.origin.url``): the password goes, and over http(s) the user
    name too (it may be a token); git then gets credentials by its own rules (a credential
    helper, ``http.extraHeader``). An ssh or git:// user name is kept: it is no secret."""
    match = URL_SCHEME.match(url)
    if not match:
        return url
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:  # malformed: drop anything that looks like userinfo
        return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/\s]*@", r"\1", url)
    if parts.username is None and parts.password is None:
        return url
    keep_user = parts.username and match["scheme"].lower() not in ("http", "https")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}@{host}" if keep_user else host
    return urlunsplit(parts._replace(netloc=netloc))


_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|^[-/.]|[/.]$|\.lock$")


def check_ref(ref: str | None) -> str | None:
    """Validate a ``--ref`` value by git's ref-name rules (a commit id also passes)."""
    if ref is None:
        return None
    if not ref or len(ref) > 255 or _BAD_REF.search(ref):
        raise UserError(f"not a valid ref name: {ref!r}")
    return ref


_COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def check_commit_id(commit: str | None) -> str | None:
    """Validate a ``--require-commit`` value: a full commit id (40 or 64 hex digits), which is
    what pins content; an abbreviation could match a commit made to collide with it."""
    if commit is None:
        return None
    lowered = commit.lower()
    if not _COMMIT_ID.fullmatch(lowered):
        raise UserError(
            f"--require-commit needs a full commit id (40 or 64 hex digits): {commit[:80]!r}"
        )
    return lowered


MAX_DEPTH = 1_000_000
"""The most history ``--depth`` asks for (more is surely a typo)."""


def check_depth(value: object) -> int:
    """``--depth``: a whole number of commits, 1 to ``MAX_DEPTH``; raises ``UserError``."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise UserError(f"--depth must be a whole number from 1 to {MAX_DEPTH}")
    text = str(value).strip()
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_DEPTH:
        raise UserError(f"--depth must be a whole number from 1 to {MAX_DEPTH}, not {text[:40]!r}")
    return int(text)
