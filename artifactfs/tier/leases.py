"""Fetch leases: when a fleet starts on a blob no node has yet, one node fetches it from the
origin and the others wait for the tier, so the origin sends one copy whatever the fleet's size.

A lease is a small object, ``leases/<algorithm>/<2 hex>/<hex>``, created only if absent (the
tier's create-only put) by the node that is about to fetch the blob from its origin, and
rewritten every ``RENEW_SECONDS`` by a compare-and-swap on its ETag while that node makes
progress (fetching, keeping, uploading). A node that finds another's lease waits for the blob to
appear in the tier while the lease keeps changing; a lease whose ETag has not changed for
``FRESH_SECONDS`` *as the waiting node saw it* (its own clock only: nodes' clocks may differ)
is abandoned, and the waiting node takes it over by a compare-and-swap on that ETag (so two
waiters never both take it) and fetches from the origin itself.

Leases are never deleted: once the blob is in the tier nobody looks at them again, and an
abandoned one is taken over. Its content (who holds it) is for people reading the bucket;
nothing trusts it. Blocking functions: call them from worker threads.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import dataclass

from ..cas import Digest
from .keys import blob_key
from .objects import ObjectStore, PreconditionFailed

RENEW_SECONDS = 2.0
FRESH_SECONDS = 6.0
"""A lease unchanged for this long (three renewals missed) is abandoned."""


def lease_key(digest: Digest) -> str:
    return "leases/" + blob_key(digest).removeprefix("blobs/")


def owner_name() -> str:
    """This process, for a person reading the bucket (no path, no user)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Lease:
    key: str
    etag: str


def _payload(owner: str) -> bytes:
    return json.dumps({"owner": owner, "renewed": time.time()}).encode()


def take(store: ObjectStore, digest: Digest, owner: str) -> Lease | None:
    """This node's new lease on ``digest``, or None if another node holds one."""
    key = lease_key(digest)
    try:
        return Lease(key, store.put_if(key, _payload(owner), None))
    except PreconditionFailed:
        return None


def take_over(store: ObjectStore, digest: Digest, owner: str, stale_etag: str) -> Lease | None:
    """The abandoned lease whose ETag is ``stale_etag``, now this node's; None if another node
    took it (or its holder renewed it) first."""
    key = lease_key(digest)
    try:
        return Lease(key, store.put_if(key, _payload(owner), stale_etag))
    except PreconditionFailed:
        return None


def renew(store: ObjectStore, lease: Lease, owner: str) -> Lease | None:
    """The lease rewritten (a sign of life); None if it was taken over meanwhile."""
    try:
        return Lease(lease.key, store.put_if(lease.key, _payload(owner), lease.etag))
    except PreconditionFailed:
        return None


def current_etag(store: ObjectStore, digest: Digest) -> str | None:
    """The ETag of ``digest``'s lease as it is now (None: there is none)."""
    info = store.head(lease_key(digest))
    return None if info is None else info.etag


class Watch:
    """A waiting node's view of another's lease: abandoned once its ETag has stayed the same
    for ``FRESH_SECONDS`` of this node's own (monotonic) clock."""

    def __init__(self, fresh_seconds: float = FRESH_SECONDS) -> None:
        self.fresh_seconds = fresh_seconds
        self.etag: str | None = None
        self._since = 0.0

    def abandoned(self, etag: str | None, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if etag != self.etag:
            self.etag, self._since = etag, now
            return etag is None
        return etag is None or now - self._since >= self.fresh_seconds
