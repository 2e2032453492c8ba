"""How much the kernel reads ahead on a mount, which decides how large its FUSE reads are.

The kernel asks a FUSE file system for file contents in requests no larger than its read-ahead
for that mount (``/sys/class/bdi/<major:minor>/read_ahead_kb``, 128 KiB by default). Every
request is a Python call here, so 128 KiB requests cap a cached read at a few hundred MB/s;
at 4 MiB the kernel sends 1 MiB requests (FUSE's largest) and the same read goes several
times faster.

Each source says what it wants (``Source.read_ahead_kib``): git mounts ask for 4 MiB (blobs
are fetched whole anyway); Hub mounts keep the default, because the kernel also reads that far
around every page a program maps (``safetensors`` maps its files), past the end of the one
tensor it wanted, and those bytes would be fetched from the Hub (docs/benchmarks.md).

The kernel sets it when it gets the file system's answer to FUSE's INIT request, which the
worker sends once its loop runs, after the mount: a value written before that is overwritten.
So it is set from the loop, and checked again a little later.

Only root may write the setting; anyone else keeps the kernel's default, silently.

A source may want more for files already complete in the store (``complete_read_ahead_kib``:
Hub mounts, whose cached models should read at the disk's speed). The kernel copies the
mount's setting into an open file when our answer to its FUSE_OPEN arrives, and keeps it for
that open's life (fs/read_ahead.py), so ``PerOpenReadAhead`` sets the mount's value to what
each open wants just before it is answered. An open answered a moment ago may not have copied
the value yet: before it changes the value the other way, the switch waits until the opens of
the other kind answered recently are settled (the kernel read or released them, which it does
only once it has set them up) or ``SETTLE_SECONDS`` old. Opens of one kind in a row cost
nothing; a switch costs a write to sysfs (an integer, no I/O: done on the loop).
"""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from .mountpoints import mount_at

log = logging.getLogger(__name__)

BDI = Path("/sys/class/bdi")


SETTLE_SECONDS = 0.05
SETTLE_POLL_SECONDS = 0.001


async def keep_read_ahead(
    mountpoint: Path, kib: int, per_open: PerOpenReadAhead | None = None
) -> None:
    """Set the read-ahead of our mount once FUSE's INIT has been answered, and see it stays;
    then hand the setting to ``per_open``, if any, which changes it open by open."""
    for delay in (0.05, 0.25, 1.0):
        await trio.sleep(delay)
        if per_open is not None and per_open.attached:
            if not per_open.recheck():
                return
        elif not await trio.to_thread.run_sync(set_read_ahead, mountpoint, kib):
            return
        elif per_open is not None:
            setting = await trio.to_thread.run_sync(setting_of, mountpoint)
            if setting is not None:
                per_open.attach(setting, kib)


class PerOpenReadAhead:
    """The mount's read-ahead set open by open: ``large_kib`` for an open of a complete file,
    ``small_kib`` for the others (``fs.read_ahead.OpenReadAhead``). Does nothing until
    ``attach``ed to the mount's setting (and forever, where that cannot be written)."""

    def __init__(self, small_kib: int, large_kib: int) -> None:
        self.small_kib = small_kib
        self.large_kib = large_kib
        self._setting: Path | None = None
        self._current = small_kib
        self._answered: dict[int, tuple[int, float]] = {}
        """Opens answered and not settled yet: fh → (the KiB they were given, when)."""
        self.switches = 0

    @property
    def attached(self) -> bool:
        return self._setting is not None

    def attach(self, setting: Path, current_kib: int) -> None:
        self._setting = setting
        self._current = current_kib

    def recheck(self) -> bool:
        """Write the value the last open was given again if the kernel put its own back (its
        answer to INIT may come late). False if the setting cannot be written."""
        if self._setting is None:
            return False
        try:  # sysfs: no I/O, on the loop, so that no open comes between
            if self._setting.read_text().strip() != str(self._current):
                self._setting.write_text(f"{self._current}\n")
        except OSError as exc:
            log.warning("read-ahead of the mount cannot be changed any more: %s", exc)
            self._setting = None
            return False
        return True

    async def opening(self, fh: int, complete: bool) -> None:
        if self._setting is None:
            return
        wanted = self.large_kib if complete else self.small_kib
        while self._current != wanted:
            await self._others_settled(wanted)
            if self._current == wanted or self._setting is None:
                break  # another open set it meanwhile
            try:  # a sysfs integer, no I/O: on the loop, so that nothing can come between
                self._setting.write_text(f"{wanted}\n")
            except OSError as exc:
                log.warning("read-ahead of the mount cannot be changed any more: %s", exc)
                self._setting = None
                return
            self._current = wanted
            self.switches += 1
        self._answered[fh] = (wanted, trio.current_time())

    def settled(self, fh: int) -> None:
        self._answered.pop(fh, None)

    async def _others_settled(self, wanted: int) -> None:
        """Wait until no open given another value may still be about to copy the setting."""
        while True:
            now = trio.current_time()
            waiting = False
            for fh, (kib, answered) in list(self._answered.items()):
                if now - answered >= SETTLE_SECONDS:
                    del self._answered[fh]  # opened and never read yet: long set up
                elif kib != wanted:
                    waiting = True
            if not waiting:
                return
            await trio.sleep(SETTLE_POLL_SECONDS)


def setting_of(mountpoint: Path) -> Path | None:
    """The sysfs file holding the read-ahead of the mount at ``mountpoint``. Finds the mount
    in the mount table (a ``stat`` of our own mount could wait on us)."""
    entry = mount_at(mountpoint)
    if entry is None or ":" not in entry.device:
        return None
    return BDI / entry.device / "read_ahead_kb"


def set_read_ahead(mountpoint: Path, kib: int) -> bool:
    """Set the read-ahead of the mount at ``mountpoint`` (if it differs); True if it is set."""
    setting = setting_of(mountpoint)
    if setting is None:
        return False
    try:
        if setting.read_text().strip() == str(kib):
            return True
        setting.write_text(f"{kib}\n")
    except OSError as exc:
        log.debug("read-ahead of %s stays at the default: %s", mountpoint, exc)
        return False
    log.debug("read-ahead of %s: %d KiB", mountpoint, kib)
    return True
