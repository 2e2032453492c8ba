"""Write-behind: what this home fetched from an origin goes up to the tier, behind the reader.

A reader never waits for an upload: ``upload_backlog`` is a background task (the mount worker
runs one) that leases a batch of the backlog (``ledger.py``: published blobs the tier is not
known to hold), sends each with a create-only put from a thread, and records it as held, also
when the put was refused because another node was first. A blob that went from the store
meanwhile (evicted) is skipped; a failed upload is tried again after a growing wait; a tier
that is down is left alone for a while. ``push`` does the same in the foreground, to the end
(``artifactfs tier push``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio
import trio.lowlevel

from ..cas import ContentStore
from .keys import blob_key
from .ledger import Ledger, Pending
from .objects import ObjectStore, TierError

log = logging.getLogger(__name__)

BATCH = 64
PARALLEL = 2
"""Uploads at once per process: enough to fill a link, few enough to leave the disk and the
CPU to readers."""
IDLE_SECONDS = 5.0
DOWN_SECONDS = 30.0


@dataclass
class UploadReport:
    uploaded: int = 0
    uploaded_bytes: int = 0
    already_there: int = 0
    gone: int = 0
    failed: int = 0


def upload_one(store: ObjectStore, ledger: Ledger, cas: ContentStore, item: Pending) -> str:
    """Send one blob; returns what happened: ``uploaded``, ``already_there``, ``gone`` or
    ``failed``. Blocking."""
    path = cas.path_of(item.digest)
    try:
        if not path.is_file():
            raise FileNotFoundError(path)
        created = store.put_new(blob_key(item.digest), path)
    except FileNotFoundError:  # evicted, its row not dropped yet: looked at again after a wait,
        ledger.failed(item.digest)  # not leased again at once (the loop would spin on it)
        return "gone"
    except TierError as exc:
        wait = ledger.failed(item.digest)
        log.warning(
            "upload of %s to the tier failed (%s); next try in %.0f s", item.digest, exc, wait
        )
        return "failed"
    ledger.mark_held([item.digest])
    return "uploaded" if created else "already_there"


def _count(report: UploadReport, item: Pending, outcome: str) -> None:
    setattr(report, outcome, getattr(report, outcome) + 1)
    if outcome == "uploaded":
        report.uploaded_bytes += item.size


def push(
    store: ObjectStore,
    ledger: Ledger,
    cas: ContentStore,
    progress: Callable[[UploadReport], None] | None = None,
) -> UploadReport:
    """Upload the whole backlog now, in this thread. Blobs whose upload fails are counted and
    left for later (with their wait)."""
    report = UploadReport()
    while batch := ledger.lease(BATCH):
        for item in batch:
            _count(report, item, upload_one(store, ledger, cas, item))
            if progress is not None:
                progress(report)
    return report


async def upload_backlog(
    store: ObjectStore,
    ledger: Ledger,
    cas: ContentStore,
    wake: Callable[[], trio.Event] | None = None,
) -> None:
    """Forever: upload what is pending, then wait ``IDLE_SECONDS`` (or until ``wake()``'s
    event is set)."""
    report = UploadReport()
    limiter = trio.CapacityLimiter(PARALLEL)

    async def one(item: Pending) -> None:
        try:
            outcome = await trio.to_thread.run_sync(
                upload_one, store, ledger, cas, item, limiter=limiter
            )
        except Exception as exc:  # noqa: BLE001 - a busy ledger, a disk error: this upload
            log.warning("upload of %s to the tier failed: %s", item.digest, exc)  # not the mount
            outcome = "failed"
        _count(report, item, outcome)

    while True:
        try:
            batch = await trio.to_thread.run_sync(ledger.lease, BATCH)
        except Exception as exc:  # noqa: BLE001 - a busy ledger: try again later
            log.warning("the tier's upload ledger could not be read: %s", exc)
            batch = []
        if batch:
            started = time.monotonic()
            failed_before = report.failed
            async with trio.open_nursery() as nursery:
                for item in batch:
                    nursery.start_soon(one, item)
            log.info(
                "tier: %d uploaded (%d bytes), %d there already, %d failed so far",
                report.uploaded,
                report.uploaded_bytes,
                report.already_there,
                report.failed,
            )
            if report.failed - failed_before == len(batch):
                await trio.sleep(DOWN_SECONDS)  # the tier is down: do not spin on it
            elif time.monotonic() - started < 0.01:
                await trio.lowlevel.checkpoint()
            continue
        with trio.move_on_after(IDLE_SECONDS):
            if wake is not None:
                await wake().wait()
            else:
                await trio.sleep_forever()
