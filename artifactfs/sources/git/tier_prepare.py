"""A git commit prepared without its origin, from what other nodes shared through the tier.

Another node that prepared a commit shares two things: the commit's snapshot (the mount
worker, tier/snapshots.py) and the pack of the commit and its trees that git sent
(``share_tip_pack``, here). A cold node whose origin cannot be reached (or that is offline),
for a ``--ref`` that is a full commit id, takes both:

- the pack is kept only if it holds that commit; then the snapshot is *indexed again from its
  trees*, exactly as from the origin (``GitRemote._index_kept_pack``): every tree is named by
  its id from the pinned commit down, so the listing is the origin's, whoever wrote the bucket.
  Only the sizes are taken from the shared snapshot (a size is checked against the blob when it
  is opened, and one not known is learned on demand); symlink targets come from their blobs
  (store or tier, verified);
- without a usable pack, nothing from the tier is used: the shared snapshot alone is the
  bucket's word, and it would stay this commit's listing in the home for good.

Blocking: runs in prepare's thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dulwich.objects import Commit

from ...errors import SourceError
from ...snapshot.index import SnapshotIndex
from .packs import iter_objects, object_id

if TYPE_CHECKING:
    from ...tier.access import TierAccess

log = logging.getLogger(__name__)

IndexPack = Callable[[Path, dict[str, int], Path], None]
"""Index the pinned commit from the kept pack (first) into the snapshot file (third), with
the sizes known (second); raises what a bad pack raises."""


def share_tip_pack(tier: TierAccess, display: str, commit: str, pack: Path) -> None:
    """Give the tier the kept pack of ``commit``'s commit and trees, from a thread of its own
    (best effort: nothing waits for it)."""
    from ...tier.keys import tip_pack_key
    from ...tier.objects import TierError
    from ...tier.snapshots import share_file

    if not pack.exists():
        return

    def share() -> None:
        try:
            share_file(tier, tip_pack_key(display, commit), pack)
        except (TierError, OSError) as exc:
            log.warning("could not share the pack of %s with the tier: %s", commit, exc)

    threading.Thread(target=share, name="artifactfs-share-pack", daemon=True).start()


def prepare_from_tier(
    tier: TierAccess,
    display: str,
    commit: str,
    object_format: str,
    final: Path,
    kept: Path,
    max_pack_bytes: int,
    index_pack: IndexPack,
) -> bool:
    """Make ``final`` the snapshot of ``commit`` from what the tier holds; False (the log
    says why) if nothing usable is there. ``kept`` is where the commit's pack is kept."""
    from ...tier.snapshots import snapshot_from_tier

    staged = final.with_name(f".{final.name}.tmp-tier-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        listed = snapshot_from_tier(tier, display, commit, staged)
        packed = _pack_from_tier(tier, display, commit, object_format, kept, max_pack_bytes)
        # only through the pack: the listing is then rebuilt from the commit's own trees (a
        # shared snapshot alone is the bucket's word, and would stay this commit's listing)
        return packed and _indexed(
            commit, index_pack, kept, _sizes_of(staged) if listed else {}, final
        )
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()


def _sizes_of(path: Path) -> dict[str, int]:
    index = SnapshotIndex(path)
    try:
        return index.blob_sizes()
    finally:
        index.close()


def _pack_from_tier(
    tier: TierAccess, display: str, commit: str, object_format: str, kept: Path, max_bytes: int
) -> bool:
    """The kept pack of ``commit`` is on disk: kept already, or from the tier and holding that
    commit (object ids are hashed from content)."""
    from ...tier.keys import tip_pack_key
    from ...tier.snapshots import file_from_tier

    if kept.exists():
        return True

    def check(path: Path) -> None:
        try:
            with open(path, "rb") as pack:
                for obj in iter_objects(pack, object_format):
                    if isinstance(obj, Commit) and object_id(obj, object_format) == commit:
                        return
        except SourceError as exc:  # malformed
            raise ValueError(str(exc)) from None
        raise ValueError(f"it does not hold commit {commit}")

    return file_from_tier(tier, tip_pack_key(display, commit), kept, check, max_bytes)


def _indexed(
    commit: str, index_pack: IndexPack, kept: Path, sizes: dict[str, int], final: Path
) -> bool:
    if final.exists():
        return True
    try:
        index_pack(kept, sizes, final)
    except (SourceError, KeyError, ValueError, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        log.warning("could not index %s from its commit and trees in the tier: %s", commit, reason)
        with contextlib.suppress(FileNotFoundError):
            kept.unlink()  # damaged: never used again; the origin's next answer replaces it
        return False
    log.info("indexed %s from its commit and trees in the tier", commit)
    return True
