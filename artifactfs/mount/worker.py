"""Run one mount in the foreground: mount a placeholder at once, prepare in the background.

The order matters for "mounted at once": the FUSE session is mounted before anything touches
the network, with the gate closed; trio then runs the pyfuse3 loop, the prepare task and the
blob fetcher side by side. Prepare opens the gate or fails it (EIO at once, reason in the
root's xattrs). A failed prepare ends the worker with status 1 unless ``keep_failed`` is set,
in which case the mount stays in failed state and SIGHUP retries it.

SIGINT and SIGTERM end the worker cleanly; so does an unmount from outside
(``artifactfs unmount``, ``fusermount3 -u``). Network calls carry a socket timeout so a dead
origin turns into EIO instead of a reader hanging forever.
"""

from __future__ import annotations

import logging
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from ..cas import ContentStore, Digest
from ..cas.digests import git_blob_algorithm
from ..errors import SourceError, UserError
from ..fetching import BlobFetcher
from ..fs.gated import GatedOperations
from ..fs.operations import SnapshotOperations
from ..fs.state import MountState
from ..home import ArtifactHome
from ..snapshot import SnapshotIndex
from ..sources.git.source import GitSource
from ..sources.spec import GitSourceSpec

log = logging.getLogger(__name__)

MAX_FUSE_TASKS = 1000


@dataclass(frozen=True)
class MountRequest:
    spec: GitSourceSpec
    ref: str | None
    mountpoint: Path
    home: ArtifactHome
    keep_failed: bool = False
    io_timeout: float = 60.0


class _Worker:
    def __init__(self, request: MountRequest) -> None:
        self.request = request
        self.exit_code = 0
        home = request.home
        temp_dir = home.root / "tmp"
        temp_dir.mkdir(exist_ok=True)
        self.state = MountState(request.spec.display, request.ref)
        self.cas = ContentStore(home.cas_dir)
        self.source = GitSource(request.spec, request.ref, temp_dir, self.state.counters)
        self.fetcher = BlobFetcher(
            lambda oids: self.source.fetch_blobs(oids, self.cas),
            lambda oid: self.cas.contains(Digest(self.state.blob_algorithm, oid)),
        )
        inner = SnapshotOperations(self.state, self.cas, self.fetcher)
        self.operations = GatedOperations(inner, self.state.gate)
        self._retry = trio.Event()

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._handle_signals)
            nursery.start_soon(self.fetcher.run)
            nursery.start_soon(self._prepare)
            await pyfuse3.main(max_tasks=MAX_FUSE_TASKS)
            nursery.cancel_scope.cancel()
        snapshot = self.state.snapshot
        if snapshot is not None:
            snapshot.close()

    async def _handle_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: preparing again")
                    self._retry.set()
                else:
                    log.info("%s: unmounting", signal.Signals(signum).name)
                    pyfuse3.terminate()

    async def _prepare(self) -> None:
        display = self.request.spec.display
        while True:
            self._retry = trio.Event()
            try:
                prepared = await trio.to_thread.run_sync(
                    self.source.prepare,
                    self.request.home.snapshots_dir,
                    self.cas,
                    abandon_on_cancel=True,
                )
                snapshot = await trio.to_thread.run_sync(SnapshotIndex, prepared.path)
            except SourceError as exc:
                reason = str(exc)
            except Exception as exc:
                log.exception("prepare of %s failed unexpectedly", display)
                reason = f"internal error: {type(exc).__name__}"
            else:
                self.state.blob_algorithm = git_blob_algorithm(prepared.object_format)
                self.state.snapshot = snapshot
                self.state.gate.open()
                files = snapshot.meta.files
                log.info("ready: %s at %s (%d files)", display, prepared.commit[:12], files)
                return
            self.state.gate.fail(reason)
            log.error("cannot prepare %s: %s", display, reason)
            if not self.request.keep_failed:
                self.exit_code = 1
                pyfuse3.terminate()
                return
            await self._retry.wait()
            self.state.gate.reset()


def run(request: MountRequest) -> int:
    """Mount, serve until unmounted or signalled, unmount; return the exit status."""
    socket.setdefaulttimeout(request.io_timeout)
    worker = _Worker(request)
    options = {"fsname=artifactfs", "subtype=artifactfs", "ro", "default_permissions"}
    try:
        pyfuse3.init(worker.operations, str(request.mountpoint), options)
    except RuntimeError as exc:
        raise UserError(f"cannot mount at {request.mountpoint}: {exc}") from None
    log.info("mounted %s at %s (preparing)", request.spec.display, request.mountpoint)
    try:
        trio.run(worker.serve)
    finally:
        pyfuse3.close(unmount=True)
    return worker.exit_code
