"""Claims: which process is fetching a blob right now, so that others wait instead of
fetching it again.

Mounts of different repositories (different processes) share one CAS; when two of them miss
the same blob at the same moment, one fetches and the other waits for the published blob. A
claim is an exclusive ``flock`` on ``<cas>/.claims/<hex>``. The file is removed once the blob
is published; a process that locked a file which was removed meanwhile notices (the path no
longer names the inode it locked) and tries again. A crashed fetcher's lock dies with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from pathlib import Path

_HEX = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
WAIT_POLL_SECONDS = 0.02


class Claim:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)


class FetchClaims:
    """Blocking: use from worker threads."""

    def __init__(self, cas_root: Path) -> None:
        self.directory = cas_root / ".claims"

    def _path(self, hex_digest: str) -> Path:
        if not _HEX.fullmatch(hex_digest):
            raise ValueError(f"not a blob id: {hex_digest[:80]!r}")
        return self.directory / hex_digest

    def try_claim(self, hex_digest: str) -> Claim | None:
        """Claim the right to fetch this blob, or None if another process holds it."""
        return self._claim(hex_digest, blocking=False)

    def wait(self, hex_digest: str, timeout: float) -> bool:
        """Wait until nobody fetches this blob any more; False if that took over ``timeout``
        seconds (the other fetcher may be stuck: the caller then fetches it itself)."""
        deadline = time.monotonic() + timeout
        while True:
            claim = self._claim(hex_digest, blocking=False)
            if claim is not None:
                claim.release()
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(WAIT_POLL_SECONDS)

    def sweep(self, older_than_seconds: float) -> int:
        """Remove claim files nobody holds that crashed fetchers left; return how many."""
        if not self.directory.is_dir():
            return 0
        cutoff = time.time() - older_than_seconds
        removed = 0
        for path in self.directory.iterdir():
            with contextlib.suppress(FileNotFoundError, ValueError):
                if path.stat().st_mtime < cutoff:
                    claim = self.try_claim(path.name)
                    if claim is not None:
                        claim.release()
                        removed += 1
        return removed

    def _claim(self, hex_digest: str, blocking: bool) -> Claim | None:
        path = self._path(hex_digest)
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return Claim(path, fd)
            except FileNotFoundError:
                pass
            os.close(fd)  # locked a file its owner had already removed: try again
