"""The store's upkeep in a running process: usage written out, eviction off the read path.

``keep_store`` is a trio task: the mount worker runs it with its ``UsageRecorder`` (what it
opened and published is written to ``usage.sqlite`` every ``FLUSH_SECONDS`` and when it stops),
the daemon without one. Either evicts when the recorded total passes the cap: at once when a
publish takes it there (the recorder wakes the task), else at the next periodic look, which
also catches what other processes recorded. The work is SQLite and unlinks, in a thread.

Past the hard limit (cas/eviction.py) the publishing thread evicts itself, before its blob's
reader is answered: that is the only time a read waits for eviction, and it happens only
when content arrives faster than the background keeps up.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

import trio

from .eviction import CachePolicy, EvictionReport, evict, format_size
from .usage import UsageDB, UsageRecorder, reconcile

log = logging.getLogger(__name__)

FLUSH_SECONDS = 2.0
LAST_FLUSH_SECONDS = 2.0
"""A stopping process writes what it recorded for at most this long (a busy table may hold
it): what is lost is found again by the next reconciliation."""
STUCK_LOG_SECONDS = 300.0
"""A store held over its cap by blobs in use or pinned is said so at most this often."""


class _Upkeep:
    def __init__(
        self, cas_root: Path, policy: CachePolicy | None, recorder: UsageRecorder | None
    ) -> None:
        self.cas_root = cas_root
        self.policy = policy
        self.recorder = recorder
        self._db: UsageDB | None = None
        self._said_stuck = float("-inf")
        self._evicting = threading.Lock()

    def db(self) -> UsageDB:
        if self.recorder is not None:
            return self.recorder.database()
        if self._db is None:
            self._db = UsageDB(self.cas_root)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def flush(self) -> int:
        """Blocking: write what was recorded; the recorded total."""
        if self.recorder is not None:
            return self.recorder.flush()
        return self.db().total()

    def evict_if_over(self, total: int) -> EvictionReport | None:
        """Blocking: bring the store under its low-water mark if it is over its cap."""
        if self.policy is None or not self.policy.over(total):
            return None
        with self._evicting:
            report = evict(self.cas_root, self.db(), self.policy.low_water)
        if self.recorder is not None:
            self.recorder.known_total = report.after
        if self.policy.over(report.after):
            now = time.monotonic()
            if now - self._said_stuck > STUCK_LOG_SECONDS:
                self._said_stuck = now
                log.warning(
                    "the store holds %s, over its cap of %s: %s of it is open, being fetched"
                    " or pinned",
                    format_size(report.after),
                    format_size(self.policy.max_size),
                    format_size(report.busy_bytes),
                )
        return report

    def evict_now(self) -> None:
        """In a publishing thread, past the hard limit: flush and evict before returning."""
        try:
            self.evict_if_over(self.flush())
        except Exception:  # bookkeeping must never fail a publish (and so a read)
            log.exception("evicting from the store failed")

    def reconcile_if_never(self, always: bool) -> None:
        db = self.db()
        if self.policy is not None:  # what ``cache du`` shows as the cap
            db.set_meta("max_size", str(self.policy.max_size))
        if always or db.meta("reconciled") is None:
            held = reconcile(self.cas_root, db)
            log.info("the store's usage table was checked against the disk: %d blob(s)", held)


async def keep_store(
    cas_root: Path,
    policy: CachePolicy | None,
    recorder: UsageRecorder | None = None,
    *,
    reconcile_at_start: bool = False,
) -> None:
    """Run until cancelled (then flush one last time). ``reconcile_at_start``: walk the store
    to check the usage table now (the daemon); otherwise only if it was never done (a home an
    older artifactfs filled)."""
    upkeep = _Upkeep(cas_root, policy, recorder)
    limiter = trio.CapacityLimiter(1)
    wake = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def over_limit() -> None:  # any thread
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(wake.set)

    if recorder is not None and policy is not None:
        recorder.limit = policy.max_size
        recorder.hard_limit = policy.hard_limit
        recorder.over_limit = over_limit
        recorder.evict_now = upkeep.evict_now
    try:
        try:  # a walk of a large store takes a while: stopping does not wait for it
            await trio.to_thread.run_sync(
                upkeep.reconcile_if_never, reconcile_at_start, limiter=limiter,
                abandon_on_cancel=True,
            )  # fmt: skip
        except Exception:
            log.exception("could not check the store's usage table against the disk")
        while True:
            with trio.move_on_after(FLUSH_SECONDS):
                await wake.wait()
            wake = trio.Event()
            try:
                total = await trio.to_thread.run_sync(
                    upkeep.flush, limiter=limiter, abandon_on_cancel=True
                )
                await trio.to_thread.run_sync(
                    upkeep.evict_if_over, total, limiter=limiter, abandon_on_cancel=True
                )
            except Exception:  # the next round tries again; reads never depend on it
                log.exception("the store's upkeep failed")
    finally:
        if recorder is not None:
            recorder.over_limit = recorder.evict_now = None
        with trio.CancelScope(shield=True) as last:  # stopping waits for this, briefly
            last.deadline = trio.current_time() + LAST_FLUSH_SECONDS
            with contextlib.suppress(Exception):
                await trio.to_thread.run_sync(upkeep.flush, limiter=limiter, abandon_on_cancel=True)
        if not last.cancelled_caught:
            upkeep.close()
            if recorder is not None:
                recorder.close()
