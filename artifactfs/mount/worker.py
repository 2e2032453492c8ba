"""Run one mount in the foreground: mount a placeholder at once, prepare in the background.

The order matters for "mounted at once": the FUSE session is mounted before anything touches
the network, with the gate closed; trio then runs the pyfuse3 loop, the prepare task and the
background work of the source's content side by side. The worker names no kind of source: it
gets one from the head start (``sources.open_source``) and uses its declared interface.
Prepare opens the gate or fails it (EIO at once, reason in the root's xattrs). A failed
prepare ends the worker with status 1 unless ``keep_failed`` is set, in which case the mount
stays in failed state and SIGHUP retries it.

SIGINT and SIGTERM end the worker cleanly; so does an unmount from outside
(``artifactfs unmount``, ``fusermount3 -u``), noticed within a second. Stopping fails every
request that waits (on the gate or on a fetch) at once, so neither a stalled origin nor a
blocked reader can hold the exit; requests still running after a grace period are cancelled.
Network calls carry a socket timeout so a dead origin turns into EIO instead of a reader
hanging forever.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from ..cas import ContentStore
from ..cas.claims import FetchClaims
from ..cas.eviction import CachePolicy
from ..cas.upkeep import keep_store
from ..errors import SourceError, UserError
from ..fs.gate import GateState
from ..fs.gated import GatedOperations
from ..fs.hold import WriteHold
from ..fs.operations import SnapshotOperations
from ..fs.state import MountState
from ..fs.workspace import WorkspaceOperations
from ..home import ArtifactHome
from ..overlay.store import WorkspaceChanged
from ..snapshot import SnapshotIndex
from ..snapshot.index import sweep_snapshot_temporaries
from ..sources import Content, PreparedSnapshot, Source, SourceSpec
from ..tier.keys import check_checkpoint_name
from .checkpointing import (
    STOP_SECONDS,
    Checkpointer,
    CheckpointFailed,
    checkpoint_quietly,
    keep_checkpointing,
)
from .control import serve_control
from .head_start import HeadStart
from .kernel_read_ahead import PerOpenReadAhead, keep_read_ahead
from .mountpoints import FS_TYPE, mount_at
from .options import mount_options
from .profile import ProfileRecorder, RecordingContent, find_files

log = logging.getLogger(__name__)

MAX_FUSE_TASKS = 1000


@dataclass(frozen=True)
class MountRequest:
    """One mount, validated (launch.py makes it from the command line or the daemon's
    request)."""

    spec: SourceSpec
    ref: str | None
    mountpoint: Path
    home: ArtifactHome
    keep_failed: bool = False
    name: str | None = None
    """The repository's name when the daemon runs this worker."""
    control_socket: Path | None = None
    """Serve control requests here, and say "mounted" on stdout once mounted (daemon mode)."""
    allow_other: bool = False
    """Let other users (root included) see the mount (see options.mount_options)."""
    cache_policy: CachePolicy | None = None
    """The store's size cap, kept by this worker's upkeep task (cas/upkeep.py)."""
    record_profile: Path | None = None
    """Record the paths opened here, in order (mount/profile.py)."""
    workspace: Path | None = None
    """A writable mount keeps its workspace (overlay, upper files, version-control
    directory) here; None: a read-only mount."""
    checkpoint_interval: float = 0.0
    """``checkpoint.interval``: a writable daemon mount checkpoints its workspace to the tier
    (to its repository's name) this often when it changed, and at a clean stop (0: never)."""


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
STOP_GRACE_SECONDS = 3.0
"""After a stop request, requests still running get this long before they are cancelled."""
WATCH_SECONDS = 1.0
"""How often the worker checks that its mount is still there (someone may unmount it)."""
SWEEP_AGE_SECONDS = 3600.0


class _Worker:
    def __init__(self, request: MountRequest, head_start: HeadStart) -> None:
        self.request = request
        self.head_start = head_start
        self.exit_code = 0
        self.state = MountState(
            request.spec.display,
            request.ref,
            shown_ref=request.spec.shown_ref(request.ref),
            counters=head_start.settings.counters,
        )
        self.state.writable = request.workspace is not None
        self.snapshots: SnapshotOperations | WorkspaceOperations
        if request.workspace is not None:
            self.snapshots = WorkspaceOperations(self.state, request.workspace)
        else:
            self.snapshots = SnapshotOperations(self.state)
        self.hold = WriteHold() if request.workspace is not None else None
        self.operations = GatedOperations(self.snapshots, self.state.gate, self.hold)
        self.checkpointer = self._checkpointer()
        self._content: Content | None = None
        self._content_ready = trio.Event()
        self._refreshing = trio.Lock()
        self._retry = trio.Event()
        self._stopping = False
        self._fuse_scope = trio.CancelScope()
        self._served = False

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._handle_signals)
            nursery.start_soon(self._open_content)
            nursery.start_soon(self._prepare)
            nursery.start_soon(self._watch_mount)
            nursery.start_soon(self._sweep_leftovers)
            nursery.start_soon(
                keep_store,
                self.request.home.cas_dir,
                self.request.cache_policy,
                self.head_start.settings.usage,
            )
            tier = self.head_start.settings.tier
            if tier is not None:
                nursery.start_soon(tier.keep_uploading, ContentStore(self.request.home.cas_dir))
            if self.request.control_socket is not None:
                await nursery.start(serve_control, str(self.request.control_socket), self)
                _tell_daemon_mounted()  # mounted, and now reachable for watching
            if self._periodic_checkpoints():
                assert self.checkpointer is not None and self.request.name is not None
                nursery.start_soon(
                    keep_checkpointing,
                    self.checkpointer,
                    self.request.name,
                    self.request.checkpoint_interval,
                    lambda: self.state.gate.state is GateState.READY,
                    self._refreshing,
                )
            with self._fuse_scope:
                try:
                    await pyfuse3.main(max_tasks=MAX_FUSE_TASKS)
                except* ConnectionAbortedError:
                    self._connection_ended()
            self._served = True
            if self._periodic_checkpoints() and self.state.gate.state is GateState.READY:
                assert self.checkpointer is not None and self.request.name is not None
                with trio.move_on_after(STOP_SECONDS) as bounded:  # the session is over:
                    await checkpoint_quietly(self.checkpointer, self.request.name, "stop")
                if bounded.cancelled_caught:  # nothing changes now; the daemon kills at 5 s
                    log.warning("the checkpoint at the stop took over %.0f s: left", STOP_SECONDS)
            nursery.cancel_scope.cancel()
        self.snapshots.close()

    def _checkpointer(self) -> Checkpointer | None:
        tier = self.head_start.settings.tier
        if self.request.workspace is None or tier is None:
            return None
        return Checkpointer(
            self.request.workspace,
            lambda: tier.store,
            tier.location.url,
            self.request.spec.display,
            self.request.ref,
            self.hold,
            on_done=self.state.changes.notify,
        )

    def _periodic_checkpoints(self) -> bool:
        return (
            self.checkpointer is not None
            and self.request.name is not None
            and self.request.checkpoint_interval > 0
        )

    async def checkpoint(self, name: str | None, force: bool = False) -> dict[str, Any]:
        """``artifactfs checkpoint``: the workspace to ``checkpoints/<name>`` now (raises
        ``CheckpointFailed``)."""
        if self.checkpointer is None:
            why = "no tier is set (tier.url)" if self.request.workspace else "it is read-only"
            raise CheckpointFailed(f"this mount cannot checkpoint: {why}")
        if self.state.gate.state is not GateState.READY:
            raise CheckpointFailed("the mount is not ready: nothing to checkpoint yet")
        target = name or self.request.name
        if target is None:
            raise CheckpointFailed("name the checkpoint")
        try:
            check_checkpoint_name(target)
        except ValueError as exc:  # the control socket's word: checked before any work
            raise CheckpointFailed(str(exc)) from None
        async with self._refreshing:  # a refresh moves the overlay under the hold's feet
            done = await self.checkpointer.take(target, force)
        return {
            "ref": done.ref,
            "manifest": done.manifest,
            "commit": done.commit,
            "sent": done.sent,
            "sent_bytes": done.sent_bytes,
            "files": done.files,
        }

    async def _source(self) -> Source:
        """The source, once the head start has opened it (raises what opening it raised)."""
        return await trio.to_thread.run_sync(self.head_start.source.result, abandon_on_cancel=True)

    async def _open_content(self) -> None:
        """Read through the source's content and run its background work; give the mount the
        kernel read-ahead the source wants."""
        try:
            source = await self._source()
        except Exception:  # noqa: BLE001 - could not be opened: the prepare task says why
            return
        if self._stopping:
            return
        self._content = source.open_content(self.snapshots)
        if self.request.record_profile is not None:
            recorder = ProfileRecorder(self.request.record_profile)
            self._content = RecordingContent(self._content, recorder)
        self.snapshots.read_through(self._content)
        self._content_ready.set()
        if source.read_ahead_kib is not None:
            per_open = None
            large = source.complete_read_ahead_kib
            if large is not None and large != source.read_ahead_kib:
                per_open = self.state.read_ahead = PerOpenReadAhead(source.read_ahead_kib, large)
            self._nursery.start_soon(
                keep_read_ahead, self.request.mountpoint, source.read_ahead_kib, per_open
            )
        await self._content.run()

    # -- what the control socket offers --------------------------------------------------------

    def status(self) -> dict[str, Any]:
        snapshot = self.state.snapshot
        return {
            "name": self.request.name,
            "pid": os.getpid(),
            "mount": str(self.request.mountpoint),
            "source": self.state.source_display,
            "ref": self.state.ref,
            "state": self.state.gate.state.value,
            "error": self.state.gate.error,
            "commit": snapshot.meta.commit if snapshot else None,
            "files": snapshot.meta.files if snapshot else None,
            "bytes_fetched": self.state.counters.bytes_received,
            "writable": self.state.writable,
            "changed": self.state.changed_paths() if self.state.changed_paths else None,
            **({"checkpoint": self.checkpointer.last} if self.checkpointer is not None
               and self.checkpointer.last else {}),
        }  # fmt: skip

    async def prepare(self) -> str:
        """Retry a failed prepare (waiters block again from this moment), or refresh."""
        state = self.state.gate.state
        if state is GateState.FAILED:
            self.state.gate.reset()
            self._retry.set()
            return "preparing again"
        if state is GateState.READY:
            return await self.refresh()
        return "already preparing"

    async def refresh(self, discard_changes: bool = False) -> str:
        """Move to the ref's current commit. New lookups see the new tree; in a read-only
        mount open files and directories of the old one keep it (fs/generations.py). A
        workspace with changes is refused at once, with how many paths changed, unless
        ``discard_changes`` throws them away (after the new commit is known, so a refresh
        that fails keeps them). Raises SourceError."""
        async with self._refreshing:
            current = self.state.snapshot
            if self.state.gate.state is not GateState.READY or current is None:
                return f"the mount is {self.state.gate.state.value}: nothing to refresh"
            workspace = self.snapshots if isinstance(self.snapshots, WorkspaceOperations) else None
            changed = self.state.changed_paths() if self.state.changed_paths else 0
            if workspace is not None and changed and not discard_changes:
                raise SourceError(
                    f"the workspace has {changed} changed path{'s' if changed != 1 else ''};"
                    " refresh --discard-changes throws them away"
                )
            source = await self._source()
            prepared = await trio.to_thread.run_sync(source.prepare, abandon_on_cancel=True)
            old = current.meta.commit
            note = ""
            if workspace is not None and discard_changes and changed:
                await workspace.discard_changes()
                note = f" ({changed} changed path{'s' if changed != 1 else ''} discarded)"
            if prepared.commit == old:
                return f"already at {old[:12]}{note}"
            snapshot = await trio.to_thread.run_sync(SnapshotIndex, prepared.path)
            try:
                await self._show(snapshot)
            except WorkspaceChanged as exc:
                raise SourceError(str(exc)) from None
        log.info("refreshed %s from %s to %s", self.request.spec.display, old, prepared.commit)
        self._share(prepared)
        return f"moved from {old[:12]} to {prepared.commit[:12]}{note}"

    def request_stop(self, why: str) -> None:
        self._stop(why)

    async def prefetch(self, paths: list[str]) -> dict[str, Any]:
        """Fetch the files at or below ``paths`` of the current commit now, in as few fetches
        as the source allows (``artifactfs prefetch``; cli/prefetch_command.py). Waits for the
        tree to be ready. Paths the commit does not have are counted, not an error."""
        await self._content_ready.wait()
        try:
            await self.state.gate.wait()
        except pyfuse3.FUSEError:
            raise SourceError(f"the mount is {self.state.gate.state.value}") from None
        snapshot = self.state.snapshot
        assert snapshot is not None and self._content is not None  # ready
        rows, absent = await find_files(snapshot, paths)
        failed = await self._content.fetch(snapshot, rows)
        return {
            "files": len(rows) - len(failed),
            "bytes": sum(row.size or 0 for row in rows) - sum(row.size or 0 for row in failed),
            "absent": absent,
            "failed": len(failed),
        }

    # -- stopping -------------------------------------------------------------------------------

    def _stop(self, why: str) -> None:
        """End the mount: fail what waits, stop taking requests, cancel stragglers later.

        pyfuse3.main returns only once every running request is answered, so requests
        waiting on the gate or on a fetch are failed at once instead of holding the exit.
        """
        if self._stopping:
            return
        self._stopping = True
        log.info("stopping: %s", why)
        if self._content is not None:
            self._content.close("the mount is shutting down")
        if self.state.gate.state is GateState.PREPARING:
            self.state.gate.fail("the mount is shutting down")
        pyfuse3.terminate()
        self._nursery.start_soon(self._cancel_stragglers)

    def _connection_ended(self) -> None:
        """The kernel shut the FUSE connection while a request was being read from it.

        ``/dev/fuse`` answers ECONNABORTED (not the usual ENODEV, which ends pyfuse3's loop
        quietly) when an unmount or an abort lands between the kernel taking a request off
        its queue and handing it to us: the session is over either way, so the mount ends as
        if it had been unmounted, and only an abort with the mount still in place is worth a
        warning.
        """
        entry = mount_at(self.request.mountpoint)
        if entry is None or entry.fs_type != FS_TYPE:
            log.info("the FUSE connection ended with the unmount of %s", self.request.mountpoint)
        else:
            log.warning("the FUSE connection of %s was aborted", self.request.mountpoint)
        self._stopping = True

    async def _cancel_stragglers(self) -> None:
        await trio.sleep(STOP_GRACE_SECONDS)
        if self._served:  # every request was answered (a checkpoint at the stop may run on)
            return
        log.warning("requests still running after %.0f s: cancelling them", STOP_GRACE_SECONDS)
        self._fuse_scope.cancel()

    async def _handle_signals(self) -> None:
        try:
            with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked in run()
                await self._answer_signals(signals)
        finally:
            # shutting down: from here a signal would find no handler and kill us before the
            # last flushes; hold it (the process ends anyway)
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)

    async def _answer_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum != signal.SIGHUP:
                self._stop(signal.Signals(signum).name)
            elif self.state.gate.state is GateState.FAILED and self.request.keep_failed:
                log.info("SIGHUP: preparing again")
                self._retry.set()
            else:
                log.info("SIGHUP ignored: the mount is %s", self.state.gate.state.value)

    async def _watch_mount(self) -> None:
        """Notice an unmount from outside (fusermount3 -u) even while requests are waiting."""
        mountpoint = self.request.mountpoint
        while True:
            await trio.sleep(WATCH_SECONDS)
            entry = await trio.to_thread.run_sync(mount_at, mountpoint)
            if entry is None or entry.fs_type != FS_TYPE:
                self._stop(f"{mountpoint} was unmounted")
                return

    async def _sweep_leftovers(self) -> None:
        """Remove temporaries and fetch claims that crashed writers left behind (never young
        ones: they may be another process's work in progress). Best effort."""

        def sweep() -> int:
            home = self.request.home
            cas = ContentStore(home.cas_dir)
            return (
                cas.sweep_temporaries(SWEEP_AGE_SECONDS)
                + sweep_snapshot_temporaries(home.snapshots_dir, SWEEP_AGE_SECONDS)
                + FetchClaims(cas.root).sweep(SWEEP_AGE_SECONDS)
            )

        try:
            removed = await trio.to_thread.run_sync(sweep)
        except OSError as exc:
            log.warning("could not sweep leftover temporary files: %s", exc)
            return
        if removed:
            log.info("removed %d temporary files left by crashed writers", removed)

    async def _prepare(self) -> None:
        display = self.request.spec.display
        attempt: Callable[[], PreparedSnapshot] = self.head_start.first_prepare.result
        while True:
            self._retry = trio.Event()
            try:
                prepared = await trio.to_thread.run_sync(attempt, abandon_on_cancel=True)
                snapshot = await trio.to_thread.run_sync(SnapshotIndex, prepared.path)
            except SourceError as exc:
                reason = str(exc)
            except Exception as exc:
                log.exception("prepare of %s failed unexpectedly", display)
                reason = f"internal error: {type(exc).__name__}"
            else:
                await self._content_ready.wait()  # opened right after the source, which
                if self._stopping:  # prepared this: no network, a moment at most
                    snapshot.close()
                    return
                try:
                    await self._show(snapshot)
                except (WorkspaceChanged, SourceError) as exc:
                    reason = str(exc)
                    log.error("cannot show %s: %s", display, reason)
                    self.exit_code = 1
                    self.state.gate.fail(reason)
                    self._stop("the workspace cannot be shown")
                    return
                self.state.gate.open()
                files = snapshot.meta.files
                log.info("ready: %s at %s (%d files)", display, prepared.commit[:12], files)
                self._share(prepared)
                return
            if self._stopping:
                return
            self.state.gate.fail(reason)
            log.error("cannot prepare %s: %s", display, reason)
            if not self.request.keep_failed:
                self.exit_code = 1
                self._stop("prepare failed")
                return
            await self._retry.wait()
            self.state.gate.reset()
            attempt = self._prepare_again

    async def _show(self, snapshot: SnapshotIndex) -> None:
        """Install the snapshot (the first, or a refresh's); in a writable mount the overlay
        opens over it or rebases onto it (raises ``WorkspaceChanged`` if it holds changes made
        over another commit; the snapshot is closed then), and the source's worktree, if it
        has one, is attached: its root file (git's ``.git``) is shown, it is given ``stat_of``
        for its index and told of copy-ups."""
        try:
            await self.snapshots.install(snapshot)
        except BaseException:
            snapshot.close()
            raise
        operations = self.snapshots
        if not isinstance(operations, WorkspaceOperations):
            return
        worktree = (await self._source()).worktree()
        if worktree is None:
            return
        assert self.request.workspace is not None
        root_file = await trio.to_thread.run_sync(
            worktree.attach,
            snapshot,
            self.request.workspace / "git",
            operations.stat_of,
            operations.overlay.database,
            self.request.mountpoint,
        )
        operations.show(root_file)
        operations.on_copy_up = worktree.keep_blob

    def _share(self, prepared: PreparedSnapshot) -> None:
        """Give the shared tier this commit's snapshot, behind everything (tier/snapshots.py):
        another node then mounts the commit with the origin down."""
        tier = self.head_start.settings.tier
        if tier is None:
            return
        from ..tier.snapshots import share_quietly

        display = self.request.spec.display
        self._nursery.start_soon(
            partial(
                trio.to_thread.run_sync,
                share_quietly,
                tier,
                display,
                prepared.commit,
                prepared.path,
                abandon_on_cancel=True,
            )
        )

    def _prepare_again(self) -> PreparedSnapshot:
        """Blocking: another prepare (raising what opening the source raised, if it failed)."""
        return self.head_start.source.result().prepare()


def run(request: MountRequest, head_start: HeadStart) -> int:
    """Mount, serve until unmounted or signalled, unmount; return the exit status.

    ``head_start`` has begun the first prepare already (see head_start.py).
    """
    worker = _Worker(request, head_start)
    options = mount_options(request.allow_other, writable=request.workspace is not None)
    # Until trio's handlers are in place a SIGTERM would kill us with the mount up (stale);
    # the stop signals are held (the caller blocked them already) until the handler unblocks.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        pyfuse3.init(worker.operations, str(request.mountpoint), options)
    except RuntimeError as exc:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        raise UserError(f"cannot mount at {request.mountpoint}: {exc}") from None
    log.info("mounted %s at %s (preparing)", request.spec.display, request.mountpoint)
    try:
        trio.run(worker.serve)
    finally:
        pyfuse3.close(unmount=True)
    return worker.exit_code


def _tell_daemon_mounted() -> None:
    """The daemon waits for this line on our stdout before it answers ``add-repo --async``."""
    try:
        sys.stdout.write("mounted\n")
        sys.stdout.flush()
    except OSError:  # the daemon went away; the mount goes on regardless
        pass
