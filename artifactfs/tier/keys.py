"""What the tier stores under which key. Every key is built from validated parts (a ``Digest``,
a checked name), never from remote text.

- ``blobs/<algorithm>/<2 hex>/<hex>``: a blob, exactly the bytes of the local CAS file;
- ``snapshots/<source>/<commit>``: a commit's snapshot of a source (``source`` is a hash of
  the origin's address without credentials), so a cold node mounts it with the origin down;
- ``snapshots/<source>/<commit>.pack``: the commit and its trees as git sent them (a
  writable mount's git directory is made from them);
- ``checkpoints/<name>``: a workspace checkpoint's pointer (moved by compare-and-swap), naming
  its manifest, itself a blob.
"""

from __future__ import annotations

import hashlib
import re

from ..cas import Digest

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def blob_key(digest: Digest) -> str:
    return f"blobs/{digest.algorithm.name}/{digest.hex[:2]}/{digest.hex}"


def source_id(display_url: str) -> str:
    """A source's name in the tier: its address with credentials masked, hashed (so a key
    never shows a host, a user or a path)."""
    return hashlib.sha256(display_url.encode("utf-8")).hexdigest()[:32]


def snapshot_key(display_url: str, commit: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", commit):
        raise ValueError(f"not a commit id: {commit[:80]!r}")
    return f"snapshots/{source_id(display_url)}/{commit}"


def tip_pack_key(display_url: str, commit: str) -> str:
    return snapshot_key(display_url, commit) + ".pack"


def check_checkpoint_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"not a checkpoint name: {name[:80]!r} (letters, digits, '.', '_' and '-')"
        )
    return name


def checkpoint_key(name: str) -> str:
    return f"checkpoints/{check_checkpoint_name(name)}"
