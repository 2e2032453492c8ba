"""What the Hub's API says about a repository: the commit a revision names, and its files.

Through ``huggingface_hub`` (blocking; run in a thread), so ``HF_ENDPOINT`` and the token
(``HF_TOKEN``, the token file of ``hf auth login``) work as its users expect. Everything the
API returns is checked before it is used: paths, sizes and digests come from a server.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from ...errors import OriginUnreachable, SourceError
from .refusals import RETRYABLE, describe_exception, describe_status
from .spec import HubSourceSpec

_SHA1 = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_SIZE = 1 << 50
ATTEMPTS = 5
MAX_RETRY_AFTER = 30.0

T = TypeVar("T")


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    oid: str
    """The git blob id (sha1) the Hub gives every file."""
    sha256: str | None
    """The LFS sha256, for large files."""


@dataclass(frozen=True)
class HubCommit:
    sha: str
    timestamp: int
    """Seconds since the epoch of the commit (the mtime of every entry)."""
    gated: bool
    """Its files need accepted conditions (its metadata does not)."""


class HubApi:
    def __init__(self, spec: HubSourceSpec, endpoint: str, token: str | None) -> None:
        from huggingface_hub import HfApi

        self.spec = spec
        self._endpoint = endpoint
        self._token = token
        self._api = HfApi(endpoint=endpoint, token=token or False)

    def resolve(self) -> HubCommit:
        """The commit the spec's revision names now (a branch moves; a commit does not)."""
        revision = self.spec.revision or "main"
        info = self._call(
            lambda: self._api.repo_info(
                self.spec.repo_id, revision=revision, repo_type=self.spec.repo_type
            ),
            f"{self.spec.url} at {revision}",
        )
        sha = getattr(info, "sha", None)
        if not isinstance(sha, str) or not _SHA1.fullmatch(sha):
            raise SourceError(f"the Hub gave no usable commit for {self.spec.url}: {sha!r:.60}")
        modified = getattr(info, "last_modified", None)
        timestamp = int(modified.timestamp()) if modified is not None else 0
        return HubCommit(sha, timestamp, bool(getattr(info, "gated", False)))

    def check_access(self, commit: str, path: str) -> None:
        """For a gated repository: can we read its files? (A HEAD of one; the listing would
        succeed either way, and every read fail later.)"""
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        url = hf_hub_url(
            self.spec.repo_id,
            path,
            repo_type=self.spec.repo_type,
            revision=commit,
            endpoint=self._endpoint,
        )
        self._call(
            lambda: get_hf_file_metadata(url, token=self._token or False, endpoint=self._endpoint),
            f"{self.spec.url}",
        )

    def files(self, commit: str) -> Iterator[HubFile]:
        """Every file of ``commit``, each checked (a bad entry raises SourceError)."""
        from huggingface_hub.hf_api import RepoFile

        listing = self._call(
            lambda: list(
                self._api.list_repo_tree(
                    self.spec.repo_id,
                    recursive=True,
                    expand=False,
                    revision=commit,
                    repo_type=self.spec.repo_type,
                )
            ),
            f"the file list of {self.spec.url}",
        )
        for entry in listing:
            if isinstance(entry, RepoFile):
                yield _checked(entry)

    def _call(self, call: Callable[[], T], what: str) -> T:
        """``call``, retried on 429 (after its Retry-After), 5xx and broken connections;
        failures as one line."""
        from httpx2 import TransportError
        from huggingface_hub.errors import HfHubHTTPError

        for attempt in range(ATTEMPTS):
            try:
                return call()
            except HfHubHTTPError as exc:
                response = exc.response
                status = response.status_code if response is not None else 0
                code = response.headers.get("X-Error-Code") if response is not None else None
                if status not in RETRYABLE or attempt == ATTEMPTS - 1:
                    failure = OriginUnreachable if status >= 500 else SourceError
                    raise failure(describe_status(status, what, code)) from None
                time.sleep(_retry_delay(response, attempt))
            except TransportError as exc:
                if attempt == ATTEMPTS - 1:
                    raise OriginUnreachable(describe_exception(exc, what)) from None
                time.sleep(0.5 * 2**attempt)
            except OSError as exc:
                raise OriginUnreachable(describe_exception(exc, what)) from None
            except ValueError as exc:
                raise SourceError(describe_exception(exc, what)) from None
        raise AssertionError("unreachable")


def _retry_delay(response: object, attempt: int) -> float:
    """Retry-After if the server gave a sane one (capped), else exponential backoff."""
    headers = getattr(response, "headers", None)
    value = headers.get("Retry-After") if headers is not None else None
    try:
        delay = float(str(value))
    except ValueError:
        delay = 0.5 * 2**attempt
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


def _checked(entry: object) -> HubFile:
    path = getattr(entry, "path", None)
    size = getattr(entry, "size", None)
    oid = getattr(entry, "blob_id", None)
    lfs = getattr(entry, "lfs", None)
    if not isinstance(path, str) or not path:
        raise SourceError(f"the Hub listed a file without a path: {entry!r:.100}")
    if not isinstance(size, int) or not 0 <= size < MAX_SIZE:
        raise SourceError(f"the Hub listed {path[:200]!r} with an impossible size {size!r:.40}")
    if not isinstance(oid, str) or not _SHA1.fullmatch(oid):
        raise SourceError(f"the Hub listed {path[:200]!r} without a git blob id")
    sha256 = None
    if lfs is not None:
        sha256 = getattr(lfs, "sha256", None)
        lfs_size = getattr(lfs, "size", size)
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256) or lfs_size != size:
            raise SourceError(f"the Hub listed {path[:200]!r} with unusable LFS metadata")
    return HubFile(path, size, oid, sha256)
