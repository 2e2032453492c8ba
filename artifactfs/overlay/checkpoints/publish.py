"""Sending a capture to the tier and moving the checkpoint's pointer. Blocking.

Blobs first (create-only puts, skipped for digests the tier is known to hold, and asked about
with a HEAD before they are sent), then the manifest (a blob too), then the pointer, last: a
pointer never names a manifest or a blob that is not there. The pointer moves by
compare-and-swap with the ETag this node last saw (``state.etags``; none: it must not exist
yet). A node that lost (someone else moved the pointer since) gets ``StaleCheckpoint`` and
the pointer stays as the winner left it; its blobs are in the tier, harmless. ``force`` swaps
against the ETag the pointer has now: it replaces another node's checkpoint, still never one
that moves during the swap.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

from ...cas.digests import SHA256, Digest
from ...tier.keys import blob_key, checkpoint_key
from ...tier.objects import ObjectStore, PreconditionFailed
from .capture import Captured, CaptureError
from .manifest import Pointer
from .state import CheckpointState


class StaleCheckpoint(Exception):
    """The pointer moved since this node last saw it."""


@dataclass(frozen=True)
class Published:
    ref: str
    manifest: str
    commit: str
    sent: int
    """Objects this checkpoint uploaded (blobs and the manifest)."""
    sent_bytes: int
    files: int
    unchanged: bool = False
    """Nothing changed since this node's last checkpoint to ``ref``: nothing was sent."""


def publish(
    store: ObjectStore,
    captured: Captured,
    state: CheckpointState,
    ref: str,
    force: bool = False,
    only_if_changed: bool = False,
) -> Published:
    """Send ``captured`` and point ``checkpoints/<ref>`` at it; updates ``state`` (the caller
    saves it, also when this raises: what was sent stays known)."""
    manifest = captured.manifest
    data = manifest.encode()
    digest = hashlib.sha256(data).hexdigest()
    files = len(manifest.upper) + len(manifest.git_files)
    if only_if_changed and not force and state.manifests.get(ref) == digest:
        state.stats = captured.stats
        state.captured_ns = captured.started_ns
        return Published(ref, digest, manifest.commit, 0, 0, files, unchanged=True)
    sent = sent_bytes = 0
    for blob in sorted(manifest.digests()):
        if blob in state.held:
            continue
        key = blob_key(Digest(SHA256, blob))
        if store.head(key) is None:
            staged = captured.staged.get(blob)
            if staged is None:  # cannot happen: what the tier is not known to hold is staged
                raise CaptureError(f"blob {blob} was not staged")
            if store.put_new(key, staged):
                sent += 1
                sent_bytes += staged.stat().st_size
        state.held.add(blob)
    key = blob_key(Digest(SHA256, digest))
    if digest not in state.held and store.head(key) is None and store.put_new(key, data):
        sent += 1
        sent_bytes += len(data)
    state.held.add(digest)
    pointer_key = checkpoint_key(ref)
    expected = state.etags.get(ref)
    if force:
        current = store.head(pointer_key)
        expected = None if current is None else current.etag
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    pointer = Pointer(digest, manifest.commit, created).encode()
    try:
        state.etags[ref] = store.put_if(pointer_key, pointer, expected)
    except PreconditionFailed:
        state.etags.pop(ref, None)
        raise StaleCheckpoint(
            f"checkpoint {ref} was moved by another node since this one last saw it; nothing "
            f"was replaced (keep yours under another name: --to NAME; see theirs: restore "
            f"NEW-NAME --from {ref}; replace theirs: --force)"
        ) from None
    state.manifests[ref] = digest
    state.stats = captured.stats
    state.captured_ns = captured.started_ns
    return Published(ref, digest, manifest.commit, sent, sent_bytes, files)
