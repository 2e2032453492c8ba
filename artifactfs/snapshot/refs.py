"""The commit each ref last resolved to in this home, so that an offline mount of a branch or
tag can show what was shown last (``--offline``, ``HF_HUB_OFFLINE=1``).

One small file per (kind of source, source, ref) under ``snapshots/refs/``, named by a hash of
the three (the source may hold a password: it is never written, only hashed), holding the
commit id. Written to a temporary and renamed, so a crash leaves the old answer or the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from pathlib import Path

_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def _path(snapshots_dir: Path, kind: str, source: str, ref: str | None) -> Path:
    key = hashlib.sha256("\0".join((kind, source, ref or "")).encode()).hexdigest()
    return snapshots_dir / "refs" / key[:40]


def remember(snapshots_dir: Path, kind: str, source: str, ref: str | None, commit: str) -> None:
    """Record that ``ref`` of ``source`` named ``commit`` just now (blocking; best effort: a
    full disk only costs the offline answer)."""
    path = _path(snapshots_dir, kind, source, ref)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
    with contextlib.suppress(OSError):
        path.parent.mkdir(exist_ok=True)
        temp.write_text(commit + "\n")
        os.replace(temp, path)
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()


def recall(snapshots_dir: Path, kind: str, source: str, ref: str | None) -> str | None:
    """The commit ``ref`` of ``source`` last resolved to in this home, or None."""
    try:
        text = _path(snapshots_dir, kind, source, ref).read_text().strip()
    except OSError:
        return None
    return text if _COMMIT.fullmatch(text) else None
