"""``artifactfs daemon``: the registry, the supervisors, and the socket the CLI talks to.

The CLI's requests arrive over ``$ARTIFACTFS_HOME/run/daemon.sock`` (mode 0600 in a 0700
directory), so what a command asks happens before it returns: no polling of files. One daemon
per home (a lock file says so). On start it takes back workers that outlived an earlier daemon
and starts workers for every other wanted repository; SIGINT and SIGTERM unmount everything
and exit, leaving the repositories registered for the next start.

Every request is validated before the registry changes: bad input costs one line and leaves
the registry as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import stat
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from ..errors import UserError
from ..home import ArtifactHome
from ..ipc import LineStream, Message, ProtocolError, unix_listener
from ..mount.mountpoints import FS_TYPE, check_directory, is_stale, mount_table, remove_stale
from ..mount.options import check_allow_other
from ..snapshot.index import snapshot_path
from ..sources import check_commit_id, check_ref, parse_source
from ..sources.credentials import CredentialProvider
from ..sources.registry import kind_of
from ..sources.spec import check_depth
from .names import check_name
from .registry import Conflict, Registry, Repo
from .spares import SpareWorkers
from .supervisor import Supervisor

log = logging.getLogger(__name__)

STATUS_ASK_SECONDS = 1.0
"""How long ``status`` waits for a workspace's worker to tell its changed paths."""

SHUTDOWN_SECONDS = 20.0

Reply = Callable[[Message], Awaitable[None]]


class Daemon:
    def __init__(self, home: ArtifactHome, spare_workers: int = 1) -> None:
        self.home = home
        self.spares = SpareWorkers(spare_workers) if spare_workers > 0 else None
        self.registry = Registry(home.registry_path)
        self.supervisors: dict[str, Supervisor] = {}
        self.tokens: dict[str, str] = {}
        """Tokens handed over by ``add-repo``, kept in memory only (workers get them on stdin)."""
        self._created: dict[Path, bool] = {}
        """Mount points an ``add`` in progress created (removed again if it fails)."""
        self._locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)
        """One lock per name: add, unmount, remount and remove of a name happen one at a time."""

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        listener = await unix_listener(str(self.home.daemon_socket))
        log.info("daemon %d serving %s", os.getpid(), self.home.root)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.spares is not None:
                nursery.start_soon(self.spares.run)
            for repo in self.registry.all():
                if repo.wanted:
                    self._start(repo)
                else:
                    self.registry.record_state(repo.name, "unmounted")
            nursery.start_soon(trio.serve_listeners, self._handle, [listener])
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("%s: unmounting everything", signal.Signals(signum).name)
                    break
            with trio.move_on_after(SHUTDOWN_SECONDS):
                async with trio.open_nursery() as stopping:
                    for supervisor in self.supervisors.values():
                        stopping.start_soon(supervisor.stop)
            for repo in self.registry.all():
                if repo.wanted:
                    self.registry.record_state(repo.name, "unmounted")
            nursery.cancel_scope.cancel()
        self.registry.close()

    def _start(self, repo: Repo) -> Supervisor:
        supervisor = Supervisor(
            repo, self.home, self.registry, self.tokens.get(repo.name), self.spares
        )
        self.supervisors[repo.name] = supervisor

        async def supervise() -> None:
            await supervisor.run()
            if self.supervisors.get(repo.name) is supervisor:
                del self.supervisors[repo.name]

        self._nursery.start_soon(supervise)
        return supervisor

    async def _handle(self, stream: trio.SocketStream) -> None:
        lines = LineStream(stream)
        async with stream:
            try:
                request = await lines.receive()
                if request is None:
                    return
                result = await self._dispatch(request, lines.send)
                await lines.send({"ok": True, **result})
            except UserError as exc:
                await _try_send(lines, {"ok": False, "error": str(exc)})
            except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError):
                pass  # the CLI went away (interrupted); what it asked for goes on
            except Exception:
                log.exception("request failed")
                await _try_send(
                    lines, {"ok": False, "error": "internal error (see the daemon log)"}
                )

    async def _dispatch(self, request: Message, reply: Reply) -> dict[str, Any]:
        command = request.get("cmd")
        handler = {
            "ping": self._ping,
            "add": self._add,
            "status": self._status,
            "prepare": self._prepare,
            "refresh": self._refresh,
            "unmount": self._unmount,
            "remount": self._remount,
            "remove": self._remove,
        }.get(str(command))
        if handler is None:
            raise UserError(f"unknown request {str(command)[:40]!r}")
        return await handler(request, reply)

    # -- requests ---------------------------------------------------------------------------

    async def _ping(self, request: Message, reply: Reply) -> dict[str, Any]:
        return {"pid": os.getpid(), "home": str(self.home.root)}

    async def _add(self, request: Message, reply: Reply) -> dict[str, Any]:
        name = check_name(str(request.get("name", "")))
        async with self._locks[name]:
            supervisor = await self._register(name, request)
        if not request.get("async"):
            await _follow(supervisor, reply)
        return {"status": supervisor.status}

    async def _register(self, name: str, request: Message) -> Supervisor:
        """Validate, register and mount; undo the registration if the worker cannot mount."""
        if self.registry.get(name) is not None:
            raise UserError(f"a repository named {name!r} is already registered")
        spec = parse_source(str(request.get("source", "")))
        if spec.url != spec.display:
            raise UserError(
                "do not put a password or token in the URL (it would be visible in the process"
                " list): use --token-file or ARTIFACTFS_GIT_TOKEN"
            )
        ref = check_ref(request.get("ref"))
        require_commit = check_commit_id(_text_or_none(request.get("require_commit")))
        depth = 1 if request.get("depth") is None else check_depth(request.get("depth"))
        spec.with_ref(ref)  # a Hub source may name its revision once, not twice
        token_file = await trio.to_thread.run_sync(_check_token_file, request.get("token_file"))
        writable = request.get("writable")
        if writable is None:  # the kind's default: git writable, the Hub read-only
            writable = kind_of(spec).writable_by_default
        allow_other = bool(request.get("allow_other"))
        if allow_other:  # our workers mount with our rights: may *we* ask for it?
            await trio.to_thread.run_sync(check_allow_other)
        mountpoint = await self._check_new_mountpoint(name, request.get("mount"))
        token = request.get("token")
        token = token if isinstance(token, str) and token else None
        try:
            repo = self.registry.add(
                name,
                spec.url,
                ref,
                str(mountpoint),
                token_file,
                allow_other=allow_other,
                token_from=spec.token_variable if token else None,
                offline=bool(request.get("offline")),
                require_commit=require_commit,
                writable=bool(writable),
                depth=depth,
            )
        except Conflict:
            await self._drop_new_mountpoint(name, mountpoint)
            raise UserError(f"a repository named {name!r} or at {mountpoint} exists") from None
        if token is not None:
            self.tokens[name] = token
        supervisor = self._start(repo)
        await supervisor.mounted_once.wait()
        if supervisor.mount_error is not None:
            await supervisor.stop()
            self.registry.remove(name)
            self.tokens.pop(name, None)
            await self._drop_new_mountpoint(name, mountpoint)
            raise UserError(f"cannot mount {name}: {supervisor.mount_error}")
        log.info("added %s (%s) at %s", name, spec.display, mountpoint)
        return supervisor

    async def _drop_default_mountpoint(self, name: str) -> None:
        default = self.home.default_mountpoint(name)
        with contextlib.suppress(OSError):
            await trio.to_thread.run_sync(default.rmdir)

    async def _drop_new_mountpoint(self, name: str, mountpoint: Path) -> None:
        """An add that failed leaves no directory it created behind (only if still empty)."""
        await self._drop_default_mountpoint(name)
        if self._created.pop(mountpoint, False):
            with contextlib.suppress(OSError):
                await trio.to_thread.run_sync(mountpoint.rmdir)

    async def _status(self, request: Message, reply: Reply) -> dict[str, Any]:
        name = request.get("name")
        repos = self.registry.all() if name is None else [self._known(str(name))]
        for repo in repos:
            if repo.writable:
                await self._ask_changes(repo)
        return {"repos": [self._status_of(repo) for repo in repos]}

    async def _ask_changes(self, repo: Repo) -> None:
        """A workspace's changed paths move with every write, which its worker does not
        report as it goes: ask it now (briefly; else the last count it reported stands)."""
        supervisor = self.supervisors.get(repo.name)
        if supervisor is None or supervisor.status.get("state") != "ready":
            return
        with trio.move_on_after(STATUS_ASK_SECONDS):
            with contextlib.suppress(OSError, ProtocolError, trio.TooSlowError):
                answer = await supervisor.ask("status", answer_within=STATUS_ASK_SECONDS)
                if isinstance(answer.get("status"), dict):
                    supervisor.update(answer["status"])

    def _status_of(self, repo: Repo) -> dict[str, Any]:
        supervisor = self.supervisors.get(repo.name)
        return supervisor.status if supervisor is not None else repo.public()

    async def _prepare(self, request: Message, reply: Reply) -> dict[str, Any]:
        """Prepare again; with a token (given back after a daemon restart, or rotated), the
        worker is restarted to take it, and its start prepares."""
        token = request.get("token")
        if not (isinstance(token, str) and token):
            return await self._ask_worker(request, reply, "prepare")
        repo = self._known(str(request.get("name", "")))
        supervisor = self.supervisors.get(repo.name)
        if supervisor is None:
            raise UserError(f"{repo.name} is not mounted (artifactfs remount {repo.name})")
        self.tokens[repo.name] = token
        async with self._locks[repo.name]:
            supervisor.mount_error = None
            await supervisor.restart(token)
        if supervisor.mount_error is not None:
            raise UserError(f"cannot mount {repo.name}: {supervisor.mount_error}")
        if not request.get("async"):
            await _follow(supervisor, reply)
        return {"status": supervisor.status}

    async def _refresh(self, request: Message, reply: Reply) -> dict[str, Any]:
        return await self._ask_worker(request, reply, "refresh")

    async def _ask_worker(self, request: Message, reply: Reply, command: str) -> dict[str, Any]:
        repo = self._known(str(request.get("name", "")))
        supervisor = self.supervisors.get(repo.name)
        if supervisor is None:
            raise UserError(f"{repo.name} is not mounted (artifactfs remount {repo.name})")
        try:  # no deadline for the answer: a refresh takes as long as the fetch it needs
            answer = await supervisor.ask(
                command, answer_within=None, discard_changes=bool(request.get("discard_changes"))
            )
        except (OSError, ProtocolError, trio.TooSlowError):
            raise UserError(f"the worker of {repo.name} is not answering; try again") from None
        if not answer.get("ok"):
            raise UserError(str(answer.get("error")))
        if isinstance(answer.get("status"), dict):  # the state it moved to, before we follow
            supervisor.update(answer["status"])
        if not request.get("async"):
            await _follow(supervisor, reply)
        return {"message": answer.get("message"), "status": supervisor.status}

    async def _unmount(self, request: Message, reply: Reply) -> dict[str, Any]:
        repo = self._known(str(request.get("name", "")))
        async with self._locks[repo.name]:
            await self._stop(repo)
        return {"status": self._status_of(repo)}

    async def _stop(self, repo: Repo) -> None:
        self.registry.set_wanted(repo.name, False)
        supervisor = self.supervisors.get(repo.name)
        if supervisor is not None:
            await supervisor.stop()
        self.registry.record_state(repo.name, "unmounted")

    async def _remount(self, request: Message, reply: Reply) -> dict[str, Any]:
        repo = self._known(str(request.get("name", "")))
        async with self._locks[repo.name]:
            supervisor = self.supervisors.get(repo.name)
            if supervisor is not None and not supervisor.wanted():
                await supervisor.wait_done()  # an unmount still in progress: let it finish
                supervisor = None
            if supervisor is None:
                self.registry.set_wanted(repo.name, True)
                supervisor = self._start(repo)
            await supervisor.mounted_once.wait()
        if supervisor.mount_error is not None and not supervisor.status["state"] == "ready":
            raise UserError(f"cannot mount {repo.name}: {supervisor.mount_error}")
        if not request.get("async"):
            await _follow(supervisor, reply)
        return {"status": supervisor.status}

    async def _remove(self, request: Message, reply: Reply) -> dict[str, Any]:
        repo = self._known(str(request.get("name", "")))
        async with self._locks[repo.name]:
            await self._stop(repo)
            self.registry.remove(repo.name)
            self.tokens.pop(repo.name, None)
            removed = await self._purge(repo) if request.get("purge") else []
            if request.get("purge"):
                removed += await self._purge_workspace(repo)
            if Path(repo.mountpoint) == self.home.default_mountpoint(repo.name):
                await self._drop_default_mountpoint(repo.name)
        return {"removed": removed}

    async def _purge_workspace(self, repo: Repo) -> list[str]:
        """A removed repository's workspace (its changes, upper files and git directory) goes
        only with ``--purge``: without it, ``add-repo`` of the same name finds it again."""
        workspace = self.home.workspace_dir(repo.name)

        def remove() -> list[str]:
            if not workspace.exists():
                return []
            shutil.rmtree(workspace)
            return [str(workspace)]

        return await trio.to_thread.run_sync(remove)

    async def _purge(self, repo: Repo) -> list[str]:
        """Drop the repository's snapshot, and what its source keeps beside it keyed by the same
        commit (a git source: the pack of the commit's trees), unless another repository
        shows the same commit. Blobs stay: the CAS is shared and content-addressed."""
        if repo.commit is None:
            return []
        if any(other.commit == repo.commit for other in self.registry.all()):
            return []
        origin = "hub" if repo.source.startswith("hf://") else "git"
        snapshot = snapshot_path(self.home.snapshots_dir, repo.commit, origin)
        pattern = f"{origin}-{repo.commit}.*"

        def unlink() -> list[str]:
            removed = []
            for path in sorted({snapshot, *self.home.snapshots_dir.glob(pattern)}):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(str(path))
            return removed

        return await trio.to_thread.run_sync(unlink)

    # -- validation -----------------------------------------------------------------------------

    def _known(self, name: str) -> Repo:
        repo = self.registry.get(name)
        if repo is None:
            raise UserError(f"no repository named {name[:80]!r} (see: artifactfs list-repos)")
        return repo

    async def _check_new_mountpoint(self, name: str, given: object) -> Path:
        path = await trio.to_thread.run_sync(_mountpoint_path, self.home, name, given)
        if self.registry.by_mountpoint(str(path)) is not None:
            raise UserError(f"{path} is already the mount point of another repository")
        for entry in await trio.to_thread.run_sync(mount_table):
            inside = entry.mountpoint in path.parents or entry.mountpoint == path
            if inside and entry.fs_type == FS_TYPE:
                raise UserError(f"{path} is inside another artifactfs mount ({entry.mountpoint})")
        self._created.pop(path, None)
        if await trio.to_thread.run_sync(_create_missing_mountpoint, path):
            self._created[path] = True
        try:
            await trio.to_thread.run_sync(check_directory, path)
        except UserError:
            await self._drop_new_mountpoint(name, path)
            raise
        return path


async def _try_send(lines: LineStream, message: Message) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await lines.send(message)


def _mountpoint_path(home: ArtifactHome, name: str, given: object) -> Path:
    """The absolute mount path asked for, or the default one (created if missing).

    Inside the state home only ``mnt/<name>`` may be a mount point: a mount over the CAS,
    the snapshots or the sockets would break every repository of the home.
    """
    if given is None:
        path = home.default_mountpoint(name)
        if is_stale(path):
            remove_stale(path)
        path.mkdir(parents=True, exist_ok=True)
        return path
    text = str(given)
    if not os.path.isabs(text):
        raise UserError(f"the mount path must be absolute: {text!r}")
    path = Path(os.path.realpath(text))
    root = Path(os.path.realpath(home.root))
    if (path == root or root in path.parents) and path.parent != root / "mnt":
        raise UserError(f"{path} is inside the state directory {root}")
    return path


def _create_missing_mountpoint(path: Path) -> bool:
    """Create a mount point that does not exist yet, as the default one is, when its parent is
    a directory of ours (root: any directory); True if it was created. Anything else is left
    for ``check_directory`` to refuse in one line."""
    if os.path.lexists(path):
        return False
    try:
        parent = os.stat(path.parent)
    except OSError:
        return False
    if not stat.S_ISDIR(parent.st_mode) or os.getuid() not in (0, parent.st_uid):
        return False
    try:
        path.mkdir(mode=0o755)
    except OSError:
        return False
    return True


def _text_or_none(given: object) -> str | None:
    return None if given is None else str(given)


def _check_token_file(given: object) -> str | None:
    if given is None:
        return None
    path = Path(str(given))
    if not path.is_absolute():
        raise UserError(f"the token file path must be absolute: {str(given)!r}")
    CredentialProvider(token_file=path, environ={}).check()
    return str(path)


async def _follow(supervisor: Supervisor, reply: Reply) -> None:
    """Send progress lines until the repository is ready or failed (or its supervisor ends:
    unmounted or removed meanwhile)."""
    while True:
        version = supervisor.changes.version
        status = supervisor.status
        if status["state"] in ("ready", "failed", "unmounted") or supervisor.done:
            return
        await reply({"progress": status})
        await supervisor.changes.wait_past(version)


def acquire_lock(home: ArtifactHome) -> int:
    """Hold the home's daemon lock for the life of the process, or say who holds it."""
    fd = os.open(home.daemon_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise UserError(f"a daemon is already running for {home.root} (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd
