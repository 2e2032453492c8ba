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
from pathlib import Path

_HEX = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


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

    def wait(self, hex_digest: str) -> None:
        """Wait until nobody fetches this blob any more."""
        claim = self._claim(hex_digest, blocking=True)
        if claim is not None:
            claim.release()

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
