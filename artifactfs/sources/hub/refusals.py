"""The Hub's refusals, as one line a person can act on, without tokens or tracebacks."""

from __future__ import annotations

from ...redact import mask_userinfo

RETRYABLE = (429, 500, 502, 503, 504)


def describe_status(status: int, what: str, error_code: str | None = None) -> str:
    """One line for an HTTP status the Hub answered about ``what``."""
    if status == 401 and error_code is None:
        return f"{what}: the Hub refused the token (is HF_TOKEN right?)"
    if error_code == "GatedRepo":
        return f"{what}: gated (accept its conditions on the Hub, and set HF_TOKEN)"
    if status == 401 or (error_code == "RepoNotFound" and status in (401, 404)):
        return f"{what}: not found, or private (set HF_TOKEN or log in with `hf auth login`)"
    if status == 403:
        return f"{what}: forbidden (does HF_TOKEN have access to it?)"
    if status == 404:
        if error_code == "RevisionNotFound":
            return f"{what}: unknown revision"
        if error_code == "EntryNotFound":
            return f"{what}: no such file in that revision"
        return f"{what}: not found"
    if status == 429:
        return f"{what}: the Hub is rate-limiting us (429)"
    if status >= 500:
        return f"{what}: the Hub failed ({status})"
    return f"{what}: unexpected answer {status}"


def describe_exception(exc: BaseException, what: str) -> str:
    """One line for a failure to talk to the Hub at all."""
    name = type(exc).__name__
    if "Timeout" in name:
        return f"{what}: timed out waiting for the Hub"
    if "Connect" in name:
        return f"{what}: cannot reach the Hub ({_first_line(exc)})"
    return mask_userinfo(f"{what}: {name}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]
