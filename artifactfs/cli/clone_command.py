"""``artifactfs clone SOURCE|NAME DEST [--path P]…``: a snapshot (or some of its paths) as a
real, writable directory.

SOURCE is what ``mount`` takes (a git URL or path, ``hf://…``); it is prepared in this process
with the same source a worker would open, with no mount: its snapshot is written (or found)
in the state home, and its contents are fetched through the source's ``Content`` in chunks
(``Content.fetch``: git in packs of up to 4,096 blobs, the Hub by parallel ranges). Each
chunk is materialised as soon as it is fetched, while the next one is being fetched
(overlay/materialise.py: reflink, else ``copy_file_range``, else a copy; each file checked
against its digest); the chunk's blobs are pinned meanwhile, so the store's size cap keeps
working and never takes them from under the clone. NAME (an argument with no ``/`` or ``:``)
is a repository registered with the daemon: its current commit, with a writable
repository's changes; so is an artifactfs mount point (a foreground mount's workspace too).

Safety (overlay/materialise.py): a temporary sibling of DEST with a sentinel; an interrupted
clone resumes from it; one rename publishes; a non-empty DEST is never touched.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cas.eviction import format_size
from ..errors import UserError

log = logging.getLogger(__name__)

CHUNK_FILES = 1000
CHUNK_BYTES = 256 << 20
"""A chunk of files is fetched, then materialised, then recorded as done (one sync)."""
EXIT_FAILED = 1
PLACE_TRIES = 3


def add_parser(commands: Any) -> None:
    clone = commands.add_parser(
        "clone",
        help="materialise a repository (or some paths) into a real, writable directory",
        description="Copy SOURCE (a git URL or path, or hf://org/name[@rev]) or NAME (a "
        "repository registered with the daemon, with its workspace's changes) into DEST, a "
        "new or empty directory: every file by reflink from the cache where the file system "
        "allows it (XFS, btrfs), else by copy_file_range or a copy; missing contents are "
        "fetched first, in batches; every file is checked against its digest. Work happens in "
        "a hidden sibling of DEST that an interrupted clone resumes from; DEST appears at "
        "once, whole.",
    )
    clone.add_argument(
        "source", metavar="SOURCE|NAME|MOUNTPOINT",
        help="what mount takes; a daemon repository's NAME (no '/' or ':'); or an artifactfs "
        "mount point (its commit, with its workspace's changes)",
    )  # fmt: skip
    clone.add_argument("dest", metavar="DEST", help="absent (its parent must exist), or empty")
    clone.add_argument(
        "--path",
        dest="paths",
        metavar="P",
        action="append",
        default=[],
        help="clone only this file or directory (with the directories above it); repeatable",
    )
    clone.add_argument("--ref", help="branch, tag or commit (SOURCE only; default: HEAD/main)")
    clone.add_argument("--token-file", help="a file holding the origin's access token")
    clone.add_argument("--offline", action="store_true", help="send nothing to the origin")
    clone.add_argument(
        "--io-timeout", type=float, metavar="SECONDS",
        help="give up on an origin silent this long (also ARTIFACTFS_IO_TIMEOUT; default 60)",
    )  # fmt: skip
    clone.add_argument(
        "--trust-cache", action="store_true",
        help="do not hash again what the cache holds (verified when it was stored; sizes are "
        "still checked): a reflinked clone of a warm cache then reads no file contents",
    )  # fmt: skip
    clone.add_argument("-v", "--verbose", action="count", default=0)
    clone.add_argument(  # a tuning knob (and how the tests interrupt a clone between chunks)
        "--chunk-files", type=int, default=CHUNK_FILES, help=argparse.SUPPRESS
    )
    clone.set_defaults(run=clone_command)


def is_name(text: str) -> bool:
    """NAME, not SOURCE: no ``/`` and no ``:`` (a local repository in the current directory
    is ``./repo``)."""
    return "/" not in text and ":" not in text


def clone_command(args: argparse.Namespace) -> int:
    from ..overlay.materialise import check_dest, sweep_published
    from ..sources import check_ref, parse_source

    for path in args.paths:
        if not path.strip("/") or any(p in (".", "..") for p in path.strip("/").split("/")):
            raise UserError(f"not a path in a repository: {path!r}")
    ref = check_ref(args.ref)
    workspace: Path | None = None
    mounted = None if is_name(args.source) else _mounted_at(args.source)
    if is_name(args.source) or mounted is not None:
        if ref is not None:
            raise UserError("--ref is for a SOURCE; NAME or a mount clones the commit it shows")
        spec, commit, workspace = mounted or _registered(args.source)
        spec, ref = spec.at_commit(commit), commit
    else:
        spec = parse_source(args.source).with_ref(ref)
    with contextlib.suppress(OSError):  # a clone killed right after publishing left it
        sweep_published(Path(os.path.abspath(args.dest)))
    dest = check_dest(args.dest)
    paths = sorted({p.strip("/") for p in args.paths})
    job = _Job(spec, ref, dest, paths, args, workspace)
    return job.run()


def _registered(name: str) -> tuple[Any, str, Path | None]:
    """NAME's source, current commit, and workspace directory if it is writable."""
    from ..daemon.client import call
    from ..daemon.names import check_name
    from ..home import ArtifactHome, default_home
    from ..sources import parse_source

    check_name(name)
    home = ArtifactHome(default_home())
    (repo,) = call(home, {"cmd": "status", "name": name})["repos"]
    commit = repo.get("commit")
    if not commit:
        raise UserError(f"{name} has no prepared commit yet ({repo.get('state')})")
    spec = parse_source(str(repo["source"]))
    workspace = home.workspace_dir(name) if repo.get("writable") else None
    return spec, str(commit), workspace


def _mounted_at(text: str) -> tuple[Any, str, Path | None] | None:
    """An artifactfs mount point's source, commit and workspace (a foreground mount's, or the
    daemon repository's mounted there); None if ``text`` names no such mount point."""
    from ..home import ArtifactHome, default_home
    from ..mount.mountpoints import FS_TYPE, mount_at
    from ..sources import parse_source
    from .mount_status import read_status

    path = Path(os.path.realpath(text))
    entry = mount_at(path)
    if entry is None or entry.fs_type != FS_TYPE:
        return None
    status = read_status(path)
    if status.get("state") != "ready" or not status.get("commit"):
        raise UserError(f"the mount at {path} is {status.get('state')}: nothing to clone yet")
    spec = parse_source(str(status["source"]))
    home = ArtifactHome(default_home())
    workspace = None
    if status.get("writable") == 1:
        workspace = _daemon_workspace(home, path) or home.workspace_for(path)
        if not workspace.is_dir():
            raise UserError(
                f"the workspace of the mount at {path} is not in {home.root} (set"
                " ARTIFACTFS_HOME to the mount's state home)"
            )
    return spec, str(status["commit"]), workspace


def _daemon_workspace(home: Any, mountpoint: Path) -> Path | None:
    """The workspace of the daemon's repository mounted at ``mountpoint``, if one is."""
    from ..daemon.client import call

    if not home.daemon_socket.exists():
        return None
    try:
        repos = call(home, {"cmd": "status"})["repos"]
    except UserError:
        return None
    for repo in repos:
        if repo.get("mount") == str(mountpoint):
            return Path(home.workspace_dir(str(repo["name"])))
    return None


@dataclass
class _Counts:
    files: int = 0
    bytes: int = 0
    kept: int = 0
    """Files a resumed clone had made already."""
    how: dict[str, int] = field(default_factory=dict)
    hashed: int = 0
    """Bytes read to check digests."""
    fetched_blobs: int = 0


class _Job:
    def __init__(
        self,
        spec: Any,
        ref: str | None,
        dest: Path,
        paths: list[str],
        args: argparse.Namespace,
        workspace: Path | None,
    ) -> None:
        self.spec = spec
        self.ref = ref
        self.dest = dest
        self.paths = paths
        self.args = args
        self.workspace = workspace
        self.counts = _Counts()
        self.progress = _Progress() if sys.stderr.isatty() else None

    def run(self) -> int:
        from ..cas.usage import UsageRecorder
        from ..errors import ReadError, SourceError
        from ..home import ArtifactHome, default_home
        from ..logs import configure
        from ..overlay.materialise import CloneDir, workspace_token
        from ..settings import verbosity
        from ..snapshot import SnapshotIndex
        from ..sources import SourceSettings, open_source
        from ..sources.counters import FetchCounters
        from ..sources.credentials import CredentialProvider

        home = ArtifactHome(default_home())
        home.ensure_usable()
        temp_dir = home.temp_dir
        credentials = CredentialProvider(token_file=self.args.token_file)
        credentials.check()
        given = self.args.settings
        given.export(os.environ)  # hf.cache, for the source
        configure(home.logs_dir / "clone.log", verbosity(given["log.level"]))
        socket.setdefaulttimeout(given["fetch.io_timeout"])
        self.counters = FetchCounters()
        self.usage = UsageRecorder(home.cas_dir)
        settings = SourceSettings(
            ref=self.ref,
            cas_dir=home.cas_dir,
            snapshots_dir=home.snapshots_dir,
            temp_dir=temp_dir,
            credentials=credentials,
            counters=self.counters,
            io_timeout=given["fetch.io_timeout"],
            offline=given["fetch.offline"],
            usage=self.usage,
            tier=_tier(given, home),
        )
        started = time.monotonic()
        try:
            source = open_source(self.spec, settings)
            prepared = source.prepare()
        except SourceError as exc:
            print(f"artifactfs: {exc}", file=sys.stderr)
            return EXIT_FAILED
        snapshot = SnapshotIndex(prepared.path)
        try:
            # the journal's position before the plan: a change made meanwhile makes a resumed
            # clone start over rather than keep files the plan no longer has
            try:
                token = workspace_token(self.workspace) if self.workspace else None
                entries, overlay_note = self._plan(snapshot)
            except sqlite3.DatabaseError as exc:  # damaged, or not ours: one line, no traceback
                raise UserError(
                    f"cannot read the workspace of {self.spec.display} in {self.workspace}:"
                    f" {_one_line(exc)}"
                ) from None
            identity = {
                "source": self.spec.display,
                "commit": prepared.commit,
                "paths": self.paths,
                "workspace": token,
            }
            clone_dir = CloneDir(self.dest, identity)
            try:
                clone_dir.open()
            except OSError as exc:
                raise UserError(f"cannot work beside {self.dest}: {_one_line(exc)}") from None
            try:
                self._materialise(source, snapshot, entries, clone_dir, home)
                clone_dir.publish()
            except (SourceError, ReadError, OSError) as exc:
                clone_dir.close()
                log.debug("clone failed", exc_info=True)
                reason = _one_line(exc)
                print(
                    f"artifactfs: clone of {self.spec.display} failed: {reason} (what was done"
                    f" is kept in {clone_dir.path}: the same command takes it up)",
                    file=sys.stderr,
                )
                return EXIT_FAILED
            except KeyboardInterrupt:
                clone_dir.close()
                print(
                    f"artifactfs: clone interrupted: what was done is kept in {clone_dir.path}"
                    " (the same command takes it up)",
                    file=sys.stderr,
                )
                raise
            except BaseException:
                clone_dir.close()
                raise
        finally:
            snapshot.close()
        self._summary(prepared.commit, time.monotonic() - started, clone_dir, overlay_note)
        return 0

    def _plan(self, snapshot: Any) -> tuple[list[Any], str]:
        from ..overlay.materialise import plan, plan_workspace

        if self.workspace is None:
            return plan(snapshot, self.paths), ""
        return plan_workspace(self.workspace, snapshot, self.paths)

    def _materialise(
        self, source: Any, snapshot: Any, entries: list[Any], clone_dir: Any, home: Any
    ) -> None:
        import trio

        from ..cas.eviction import CachePolicy
        from ..cas.upkeep import keep_store
        from ..errors import ReadError, SourceError

        policy = CachePolicy.resolve(None, home.root)

        failure: list[BaseException] = []

        async def main() -> None:
            content = source.open_content(_NoKernel())
            materialiser = _Materialiser(self, content, snapshot, entries, clone_dir, home)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(content.run)
                nursery.start_soon(keep_store, home.cas_dir, policy, self.usage)
                if self.progress is not None:
                    nursery.start_soon(self._show_fetching, self.progress)
                try:
                    await materialiser.run()
                except (SourceError, ReadError, OSError) as exc:  # not wrapped in a group
                    failure.append(exc)
                finally:
                    content.close("the clone is over")
                    nursery.cancel_scope.cancel()

        self.pins = _Pins(home.cas_dir, self.dest)
        try:
            trio.run(main)
        finally:
            self.pins.close()
        if failure:
            raise failure[0]

    async def _show_fetching(self, progress: _Progress) -> None:
        """While a chunk is being fetched, the bar shows the bytes arriving."""
        import trio

        while True:
            await trio.sleep(0.2)
            progress.fetched = self.counters.bytes_received
            progress.show(self.counts)

    def _summary(self, commit: str, took: float, clone_dir: Any, note: str) -> None:
        counts = self.counts
        if self.progress is not None:
            self.progress.done()
        how = ", ".join(f"{n} by {k}" for k, n in sorted(counts.how.items())) or "no file copied"
        resumed = f"; {counts.kept} already made by an interrupted clone" if counts.kept else ""
        print(
            f"cloned {counts.files} file(s) ({format_size(counts.bytes)}) of "
            f"{self.spec.display} at {commit[:12]} into {self.dest} in {took:.1f} s: {how}; "
            f"fetched {format_size(self.counters.bytes_received)}; "
            f"hashed {format_size(counts.hashed)} to check digests{resumed}{note}"
        )


def _tier(given: Any, home: Any) -> Any:
    """The shared tier, if ``tier.url`` names one: a clone reads through it like a mount
    (what it fetches from the origin is uploaded by the next mount or ``tier push``)."""
    if not given["tier.url"]:
        return None
    from ..tier.access import TierAccess

    return TierAccess.from_settings(given, home.root, home.cas_dir)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        name = exc.filename
        if isinstance(name, bytes):
            name = name.decode("utf-8", "backslashreplace")
        return f"{exc.strerror}: {name}" if name else exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@dataclass
class _Fetched:
    number: int
    chunk: list[Any]
    """Its entries but those that could not be fetched."""
    failed: list[Any]
    fresh: set[Any]
    """Digests this clone fetched (verified as they were stored)."""
    took: float


class _Ahead:
    """A chunk's fetch running in the background; ``result`` waits for it (and raises what
    it raised)."""

    def __init__(self, nursery: Any, fetch: Callable[..., Any], chunk: list[Any], number: int):
        import trio

        self._done = trio.Event()
        self._value: _Fetched | None = None
        self._error: BaseException | None = None
        nursery.start_soon(self._run, fetch, chunk, number)

    async def _run(self, fetch: Callable[..., Any], chunk: list[Any], number: int) -> None:
        from ..errors import ReadError, SourceError

        try:
            self._value = await fetch(chunk, number)
        except (SourceError, ReadError, OSError) as exc:
            self._error = exc
        finally:
            self._done.set()

    async def result(self) -> _Fetched:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


class _Pins:
    """The blobs of the chunk being cloned are pinned (cas/usage.py) from before they are
    fetched until the clone's files hold their bytes: eviction, this process's or another's,
    never takes them in between, even when one file is larger than the store's cap. Pins of
    clones that died (their pid is gone) are dropped when the next clone starts."""

    PREFIX = "clone:"

    def __init__(self, cas_dir: Path, dest: Path) -> None:
        from ..cas.usage import UsageDB

        self._db = UsageDB(cas_dir)
        self._dest = str(dest)
        self._held: set[int] = set()
        for owner in self._db.pin_paths():
            if owner.startswith(self.PREFIX) and not live_clone_pins(owner):
                self._db.unpin(owner)

    def hold(self, digests: list[Any], chunk: int) -> None:
        if digests:
            self._held.add(chunk)
            self._db.set_pins(self._owner(chunk), [self._dest], digests)

    def release(self, chunk: int) -> None:
        if chunk in self._held:
            self._held.discard(chunk)
            self._db.unpin(self._owner(chunk))

    def _owner(self, chunk: int) -> str:
        return f"{self.PREFIX}{os.getpid()}:{chunk}:{self._dest}"

    def close(self) -> None:
        try:
            for chunk in list(self._held):
                self.release(chunk)
        finally:
            self._db.close()


def live_clone_pins(owner: str) -> bool:
    """Whether ``owner`` is the pins of a clone still running (``cache gc`` keeps them)."""
    if not owner.startswith(_Pins.PREFIX):
        return False
    pid = owner[len(_Pins.PREFIX) :].partition(":")[0]
    return pid.isdigit() and _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _NoKernel:
    """The content's host without a mount: no kernel cache to tell anything."""

    async def forget_cached(self, snapshot: Any, row: Any) -> None:
        return None


class _Materialiser:
    """Fetch a chunk, place it, record it; until every entry is made."""

    def __init__(
        self, job: _Job, content: Any, snapshot: Any, entries: list[Any], clone_dir: Any, home: Any
    ) -> None:
        from ..cas import ContentStore

        self.job = job
        self.content = content
        self.snapshot = snapshot
        self.entries = entries
        self.clone_dir = clone_dir
        self.store = ContentStore(home.cas_dir)
        self.pins = job.pins
        self.mtime_ns = snapshot.meta.commit_time * 1_000_000_000

    async def run(self) -> None:
        import trio

        from ..overlay.materialise import TreeWriter
        from ..snapshot import Kind

        counts = self.job.counts
        writer = TreeWriter(self.clone_dir.tree)
        try:
            files = []
            others = []
            for entry in self.entries:
                if entry.kind in (Kind.FILE, Kind.EXECUTABLE):
                    if self.clone_dir.is_done(entry.key):
                        counts.kept += 1
                        counts.files += 1
                        counts.bytes += entry.size or 0
                    else:
                        files.append(entry)
                else:
                    others.append(entry)
            await trio.to_thread.run_sync(self._make_others, writer, others)
            total = sum(entry.size or 0 for entry in files)
            if self.job.progress is not None:
                self.job.progress.start(len(files) + counts.files, total + counts.bytes, counts)
            await self._pipeline(writer, _chunks(files, max(1, self.job.args.chunk_files)))
        finally:
            writer.close()

    async def _pipeline(self, writer: Any, chunks: list[list[Any]]) -> None:
        """Fetch chunk N+1 while chunk N is made: the origin and the disk work at once."""
        import trio

        from ..errors import ReadError, SourceError

        failure: list[BaseException] = []
        async with trio.open_nursery() as nursery:
            try:
                ahead = _Ahead(nursery, self._fetch, chunks[0], 0) if chunks else None
                for number in range(len(chunks)):
                    assert ahead is not None
                    fetched = await ahead.result()
                    if number + 1 < len(chunks):
                        ahead = _Ahead(nursery, self._fetch, chunks[number + 1], number + 1)
                    await self._make(writer, fetched)
            except (SourceError, ReadError, OSError) as exc:  # raised below, not in a group
                failure.append(exc)
                nursery.cancel_scope.cancel()
        if failure:
            raise failure[0]

    def _make_others(self, writer: Any, entries: list[Any]) -> None:
        from ..snapshot import Kind

        for entry in entries:
            if entry.kind.is_directory:
                writer.directory(entry)
            elif entry.kind is Kind.SYMLINK:
                writer.symlink(entry)
            elif entry.kind is Kind.FIFO:
                writer.fifo(entry)

    async def _fetch(self, chunk: list[Any], number: int) -> _Fetched:
        """Pin a chunk's blobs, then fetch what the store lacks."""
        import trio

        rows = [entry.row for entry in chunk if entry.row is not None and entry.size != 0]
        digests = [entry.digest for entry in chunk if entry.digest is not None]
        await trio.to_thread.run_sync(self.pins.hold, digests, number)
        present = await trio.to_thread.run_sync(self._present, chunk)
        started = time.monotonic()
        failed = await self.content.fetch(self.snapshot, rows) if rows else []
        lost = {row.inode for row in failed}
        chunk = [e for e in chunk if e.row is None or e.row.inode not in lost]
        fresh = {entry.digest for entry in chunk if entry.digest is not None} - present
        return _Fetched(number, chunk, failed, fresh, time.monotonic() - started)

    async def _make(self, writer: Any, fetched: _Fetched) -> None:
        """Make a fetched chunk's files, record them, let their pins go."""
        import trio

        from ..errors import BlobUnavailable

        started = time.monotonic()
        chunk, fresh = fetched.chunk, fetched.fresh
        self.job.counts.fetched_blobs += len(fresh)
        # first straight from the store (just fetched, and pinned); what is not there after
        # all (a blob evicted before the pins, a damaged one set aside) through the content,
        # which fetches it again
        sources: dict[str, Path] = {
            e.key: self.store.path_of(e.digest) for e in chunk if e.digest is not None
        }
        pending = await trio.to_thread.run_sync(self._place, writer, chunk, sources, fresh)
        for _ in range(PLACE_TRIES):
            if not pending:
                break
            for entry in pending:
                if entry.row is not None and entry.size != 0:
                    sources[entry.key] = await self.content.local_path(self.snapshot, entry.row)
            pending = await trio.to_thread.run_sync(self._place, writer, pending, sources, fresh)
        if pending:
            raise BlobUnavailable(
                f"{len(pending)} file(s) went missing from the store as they were copied"
                " (is the cache's size cap far too small?)"
            )
        await trio.to_thread.run_sync(
            self.clone_dir.mark_done, [e.key for e in chunk if not e.always_redo]
        )
        # the clone's files have the bytes now
        await trio.to_thread.run_sync(self.pins.release, fetched.number)
        log.debug(
            "chunk %d, %d file(s): %d fetched in %.2f s, made and recorded in %.2f s",
            fetched.number, len(chunk), len(fresh), fetched.took, time.monotonic() - started,
        )  # fmt: skip
        if fetched.failed:  # what could be had is made and kept: a later run gets the rest
            failed = fetched.failed
            first = self.snapshot.path_of(failed[0].inode).decode("utf-8", "backslashreplace")
            raise BlobUnavailable(f"{len(failed)} file(s) could not be fetched, {first!r} first")

    def _present(self, chunk: list[Any]) -> set[Any]:
        return {
            entry.digest
            for entry in chunk
            if entry.digest is not None and self.store.contains(entry.digest)
        }

    def _place(
        self, writer: Any, chunk: list[Any], sources: dict[str, Path], fresh: set[Any]
    ) -> list[Any]:
        """Make each file of ``chunk``; return those whose CAS file went away first (evicted,
        or quarantined here as damaged): they are fetched again."""
        from ..cas import reads
        from ..errors import IntegrityError
        from ..overlay.materialise import hashes_to

        counts = self.job.counts
        again = []
        for entry in chunk:
            size = entry.size  # None: a server that never told (learned from the blob)
            if entry.local is not None:  # a workspace's changed file: no digest vouches for it
                with open(entry.local, "rb") as upper:
                    size = os.fstat(upper.fileno()).st_size
                    how, fd = writer.file(entry, upper.fileno(), size, None)
                    os.close(fd)
            elif size == 0:
                writer.empty_file(entry, self.mtime_ns)
                how = "empty"
                if entry.digest is not None and not _empty_digest_matches(entry.digest):
                    raise IntegrityError(f"an empty file has the digest {entry.digest}")
            else:
                path = sources[entry.key]
                try:
                    source_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    again.append(entry)
                    continue
                try:
                    if not reads.hold(source_fd, path):  # being evicted
                        again.append(entry)
                        continue
                    if size is None:  # the digest check below vouches for it
                        size = _size_of(source_fd)
                    how, fd = writer.file(entry, source_fd, size, self.mtime_ns)
                    try:
                        if how == "reflink":  # the whole file is shared: its size first
                            checked = _size_of(source_fd) == size and (
                                entry.digest in fresh
                                or self.job.args.trust_cache
                                or self._hashed(source_fd, entry, size)
                            )
                        else:
                            checked = self._hashed(fd, entry, size)
                            if not checked and hashes_to(source_fd, entry.digest, size):
                                raise IntegrityError(  # the store is right: the copy is not
                                    f"the copy of {_shown(entry.path)} does not hash to"
                                    f" {entry.digest} though the store's file does"
                                )
                    finally:
                        os.close(fd)
                finally:
                    os.close(source_fd)
                if not checked:
                    where = self.store.quarantine(entry.digest)
                    log.error(
                        "blob %s in the store is damaged (found by clone): moved to %s, fetching"
                        " it again", entry.digest, where,
                    )  # fmt: skip
                    fresh.discard(entry.digest)
                    again.append(entry)
                    continue
            counts.files += 1
            counts.bytes += size
            counts.how[how] = counts.how.get(how, 0) + 1
            if self.job.progress is not None:
                self.job.progress.show(counts)
        return again

    def _hashed(self, fd: int, entry: Any, size: int) -> bool:
        from ..overlay.materialise import hashes_to

        self.job.counts.hashed += size
        return hashes_to(fd, entry.digest, size)


def _shown(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")[:300]


def _size_of(fd: int) -> int:
    return os.fstat(fd).st_size


def _empty_digest_matches(digest: Any) -> bool:
    hasher = digest.algorithm.new_hasher(0)
    return bool(hasher.hexdigest() == digest.hex)


def _chunks(files: list[Any], most: int) -> list[list[Any]]:
    chunks: list[list[Any]] = []
    current: list[Any] = []
    size = 0
    for entry in files:
        if current and (len(current) >= most or size + (entry.size or 0) > CHUNK_BYTES):
            chunks.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry.size or 0
    if current:
        chunks.append(current)
    return chunks


class _Progress:
    """One updating line on a terminal (at most 10 times a second)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._shown = 0.0
        self._files = 0
        self._bytes = 0
        self._lock = threading.Lock()
        self.fetched = 0
        """Bytes received from the origin so far."""

    def start(self, files: int, total: int, counts: _Counts) -> None:
        self._files = files
        self._bytes = total
        self.show(counts, force=True)

    def show(self, counts: _Counts, force: bool = False) -> None:
        with self._lock:
            now = self._clock()
            if not force and now - self._shown < 0.1 and counts.files < self._files:
                return
            self._shown = now
            with contextlib.suppress(OSError):
                fetched = f"; fetched {format_size(self.fetched)}" if self.fetched else ""
                sys.stderr.write(
                    f"\rcloning: {counts.files}/{self._files} files, "
                    f"{format_size(counts.bytes)} of {format_size(self._bytes)}{fetched} "
                )
                sys.stderr.flush()

    def done(self) -> None:
        with contextlib.suppress(OSError):
            sys.stderr.write("\n")
