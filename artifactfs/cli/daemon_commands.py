"""``daemon`` and the commands that talk to it over its socket."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from ..errors import UserError
from . import cache_command, mount_commands, prefetch_command

EXIT_FAILED = 1
MAX_SPARE_WORKERS = 8


def add_parsers(commands: Any) -> None:
    daemon = commands.add_parser(
        "daemon",
        help="run the supervisor in the foreground",
        description="Run the supervisor in the foreground: it mounts every registered "
        "repository, restarts workers that die, and serves the commands below over "
        "$ARTIFACTFS_HOME/run/daemon.sock. SIGINT/SIGTERM unmount everything and exit.",
    )
    daemon.add_argument(
        "-v", "--verbose", action="count", default=0, help="more output (twice: debug)"
    )
    daemon.add_argument(
        "--spare-workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes kept started ahead, imports done, so that add-repo mounts "
        "without waiting for Python to start (default 1; 0: none)",
    )
    daemon.add_argument(
        "--cache-max-size",
        metavar="SIZE",
        help="the blob cache's size cap, e.g. 10G, 500M, or bytes; least recently used blobs "
        "are evicted past it (also ARTIFACTFS_CACHE_MAX_SIZE, cache.max_size in config.toml; "
        "default 10%% of the state "
        "home's file system, at least 1 GiB, at most 10 GiB)",
    )
    daemon.add_argument(
        "--io-timeout",
        type=float,
        metavar="SECONDS",
        help="its workers give up on a silent server after this long (also "
        "ARTIFACTFS_IO_TIMEOUT, fetch.io_timeout in config.toml; default 60)",
    )
    daemon.add_argument(
        "--detach",
        action="store_true",
        help="run in the background: return once the daemon serves (for entrypoints and "
        "scripts); its stderr goes to $ARTIFACTFS_HOME/run/logs/daemon.stderr",
    )
    daemon.set_defaults(run=run_daemon)

    add = commands.add_parser(
        "add-repo",
        help="register a repository with the daemon and mount it",
        description="Register NAME and mount SOURCE (default mount point: "
        "$ARTIFACTFS_HOME/mnt/NAME). Returns when it is ready, or with --async as soon as "
        "the placeholder is mounted. A token for a private http(s) remote comes from "
        "--token-file (read at each use) or the kind's variable ($ARTIFACTFS_GIT_TOKEN, "
        "$HF_TOKEN), kept in the daemon's memory only (after a daemon restart, give it back "
        "with: VARIABLE=... artifactfs prepare NAME); never put one in the URL.",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("source", metavar="SOURCE")
    add.add_argument("--ref", help="branch, tag or commit (default: the remote HEAD)")
    add.add_argument("--mount", metavar="PATH", help="an existing empty directory to mount at")
    add.add_argument("--token-file", metavar="PATH", help="file holding an access token")
    add.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users, root included, read the mount (a daemon not run by root needs "
        "user_allow_other in /etc/fuse.conf); kept across remounts and restarts",
    )
    add.add_argument(
        "--offline",
        action="store_true",
        help="send nothing to the origin: a ref resolves to the commit this home last resolved"
        " it to, and only what is already stored can be read; kept across restarts",
    )
    writable = add.add_mutually_exclusive_group()
    writable.add_argument(
        "--writable",
        dest="writable",
        action="store_const",
        const=True,
        help="a writable workspace (the default for git sources): changes kept under the state"
        " home, a .git directory for the git CLI",
    )
    writable.add_argument(
        "--read-only",
        dest="writable",
        action="store_const",
        const=False,
        help="read-only (the default for hf:// sources)",
    )
    add.add_argument(
        "--depth",
        metavar="N",
        help="a writable mount's git directory holds the last N commits of history (default"
        " 1); kept across remounts and restarts",
    )
    add.add_argument(
        "--require-commit",
        metavar="SHA",
        help="become ready only if the ref resolves to this full commit id; kept, so a refresh"
        " obeys it too",
    )
    add.add_argument(
        "--profile",
        metavar="FILE",
        help="an access profile (mount --record-profile): its files are fetched, in its order, "
        "as soon as the tree is ready, before add-repo returns (with --async: in the "
        "background, reporting to run/logs/prefetch-NAME.log)",
    )
    add.add_argument(
        "--restore",
        metavar="REF",
        help="bring back checkpoint REF from the shared tier as this repository's workspace, "
        "at the checkpoint's commit (the same as: artifactfs restore NAME SOURCE --from REF)",
    )
    add.add_argument(
        "--async", dest="async_", action="store_true", help="return once the mount point is up"
    )
    add.set_defaults(run=add_repo)

    status = commands.add_parser("status", help="state of repositories (or of a mount point)")
    status.add_argument("target", metavar="NAME|PATH", nargs="?")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=status_command)

    listing = commands.add_parser("list-repos", help="registered repositories")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=list_repos)

    for name, verb, description in [
        ("prepare", "prepare", "retry a failed prepare (or refresh a ready repository)"),
        ("refresh", "refresh", "move the mount to the ref's current commit"),
        ("remount", "remount", "mount an unmounted repository again"),
    ]:
        command = commands.add_parser(name, help=description, description=description)
        command.add_argument("name", metavar="NAME")
        command.add_argument(
            "--async", dest="async_", action="store_true", help="do not wait until it is ready"
        )
        if verb == "refresh":
            command.add_argument(
                "--discard-changes",
                action="store_true",
                help="throw away what was changed in a writable mount (refused otherwise)",
            )
        command.set_defaults(run=_follow_command(verb))

    unmount = commands.add_parser(
        "unmount", help="unmount a repository (by NAME) or a mount point (by PATH)"
    )
    unmount.add_argument("target", metavar="NAME|PATH")
    unmount.add_argument("--lazy", action="store_true", help="PATH: detach even if busy")
    unmount.set_defaults(run=unmount_command)

    remove = commands.add_parser("remove-repo", help="unmount and forget a repository")
    remove.add_argument("name", metavar="NAME")
    remove.add_argument(
        "--purge",
        action="store_true",
        help="also drop its snapshot (never blobs: the cache is shared)",
    )
    remove.set_defaults(run=remove_repo)


def _home() -> Any:
    from ..home import ArtifactHome, default_home

    return ArtifactHome(default_home())


def _call(message: dict[str, Any], progress: Any = None) -> dict[str, Any]:
    from ..daemon.client import call

    return call(_home(), message, progress)


def _is_path(target: str) -> bool:
    return "/" in target


# -- the daemon --------------------------------------------------------------------------------


def run_daemon(args: argparse.Namespace) -> int:
    import trio

    from ..daemon.server import Daemon, acquire_lock
    from ..logs import configure
    from ..settings import verbosity

    if not 0 <= args.spare_workers <= MAX_SPARE_WORKERS:
        raise UserError(f"--spare-workers must be between 0 and {MAX_SPARE_WORKERS}")
    home = _home()
    try:
        home.ensure()
    except OSError as exc:
        raise UserError(f"cannot use state directory {home.root}: {exc.strerror}") from None
    from .cache_command import daemon_cache_policy, serve_with_store_upkeep

    policy = daemon_cache_policy(args.settings, home)
    if args.detach:  # the daemon started reads the file (and takes the flags) itself
        return _detach(home, args)
    # every worker it starts keeps to the daemon's settings, whatever config.toml says later
    args.settings.export(os.environ, {"cache.max_size": policy.max_size})
    lock = acquire_lock(home)
    configure(home.daemon_log, max(verbosity(args.settings["log.level"]), 1))
    logging.getLogger("artifactfs.daemon").info(
        "settings: %s", args.settings.summary({"cache.max_size": policy.max_size})
    )
    try:
        trio.run(serve_with_store_upkeep, Daemon(home, args.spare_workers).run, home, policy)
    finally:
        os.close(lock)
    return 0


DETACH_WAIT_SECONDS = 30.0


def _detach(home: Any, args: argparse.Namespace) -> int:
    """Start the daemon in a session of its own and return once it serves (or say why not)."""
    import subprocess
    import sys
    import time

    from ..daemon.client import call, daemon_lock_held

    if daemon_lock_held(home.daemon_lock):
        holder = home.daemon_lock.read_text(errors="replace").strip() or "another process"
        raise UserError(f"a daemon is already running for {home.root} (pid {holder})")
    command = [sys.executable, "-P", "-m", "artifactfs", "daemon"]
    command += ["--spare-workers", str(args.spare_workers)] + ["-v"] * args.verbose
    if args.cache_max_size is not None:
        command += ["--cache-max-size", args.cache_max_size]
    if args.io_timeout is not None:
        command += ["--io-timeout", repr(args.io_timeout)]
    stderr_path = home.logs_dir / "daemon.stderr"
    with open(stderr_path, "ab") as stderr:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,  # neither the caller's terminal nor its exit stops it
        )
    deadline = time.monotonic() + DETACH_WAIT_SECONDS
    while child.poll() is None and time.monotonic() < deadline:
        try:
            call(home, {"cmd": "status"})
        except UserError:
            time.sleep(0.02)
            continue
        print(f"artifactfs daemon {child.pid} serving {home.root}")
        return 0
    if child.poll() is None:
        child.terminate()
        raise UserError(f"the daemon did not start serving within {DETACH_WAIT_SECONDS:.0f} s")
    lines = stderr_path.read_text(errors="replace").strip().splitlines()
    raise UserError((lines[-1] if lines else "the daemon exited").removeprefix("artifactfs: "))


# -- commands ------------------------------------------------------------------------------------


def add_repo(args: argparse.Namespace) -> int:
    from ..daemon.names import check_name

    if getattr(args, "restore", None) is not None:
        return _add_restored(args)
    from ..sources import check_commit_id, check_ref, parse_source
    from ..sources.spec import check_depth

    check_name(args.name)  # the daemon checks again; this spares it the obvious
    spec = parse_source(args.source).with_ref(check_ref(args.ref))
    depth = check_depth(args.depth) if args.depth is not None else None
    if args.profile is not None:
        prefetch_command.profile_paths(args.profile)  # a bad profile before anything changes
    message: dict[str, Any] = {
        "cmd": "add",
        "name": args.name,
        "source": args.source,
        "ref": args.ref,
        "async": args.async_,
    }
    if args.mount is not None:
        message["mount"] = os.path.abspath(args.mount)
    if args.token_file is not None:
        message["token_file"] = os.path.abspath(args.token_file)
    if args.allow_other:
        message["allow_other"] = True
    if args.offline:
        message["offline"] = True
    if args.writable is not None:
        message["writable"] = args.writable
    if args.require_commit is not None:
        message["require_commit"] = check_commit_id(args.require_commit)
    if depth is not None:
        message["depth"] = depth
    token = os.environ.get(spec.token_variable, "").strip()
    if token:  # kept in the daemon's memory only, handed to the worker on its stdin
        message["token"] = token
    progress = _Progress()
    answer = _call(message, progress)
    progress.done()
    code = _finish(answer, args.async_)
    if code == 0 and args.profile is not None:  # its files first: with --async, behind our back
        return prefetch_command.prefetch(args.name, [], args.profile, args.async_)
    return code


def _add_restored(args: argparse.Namespace) -> int:
    """``add-repo NAME SOURCE --restore REF``: ``restore`` under another spelling (the commit
    is the checkpoint's, the workspace writable)."""
    from .checkpoint_command import restore_command

    for flag, value in (
        ("--ref", args.ref),
        ("--require-commit", args.require_commit),
        ("--read-only", args.writable is False or None),
        ("--profile", args.profile),
        ("--depth", args.depth),
        ("--offline", args.offline or None),
        ("--allow-other", args.allow_other or None),
    ):
        if value is not None:
            raise UserError(f"--restore takes the checkpoint's commit and options: drop {flag}")
    restore = argparse.Namespace(
        name=args.name,
        source=args.source,
        ref=args.restore,
        mount=args.mount,
        token_file=args.token_file,
        async_=args.async_,
        settings=args.settings,
    )
    return restore_command(restore)


def _follow_command(verb: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        message: dict[str, Any] = {"cmd": verb, "name": args.name, "async": args.async_}
        if getattr(args, "discard_changes", False):
            message["discard_changes"] = True
        if verb == "prepare":
            token = _token_for(args.name)
            if token:  # given back (after a daemon restart) or rotated: the worker restarts
                message["token"] = token
        progress = _Progress()
        answer = _call(message, progress)
        progress.done()
        return _finish(answer, args.async_)

    return run


def _token_for(name: str) -> str:
    """The token this repository's kind of source takes, if the environment holds one."""
    from ..sources import parse_source

    (repo,) = _call({"cmd": "status", "name": name})["repos"]
    try:
        variable = parse_source(str(repo.get("source", ""))).token_variable
    except UserError:
        return ""
    return os.environ.get(variable, "").strip()


def _finish(answer: dict[str, Any], async_: bool) -> int:
    status = answer.get("status") or {}
    if not async_ and status.get("state") == "failed":
        print(f"artifactfs: {status.get('name')} failed: {status.get('error')}", file=sys.stderr)
        return EXIT_FAILED
    if sys.stdout.isatty():
        print(_summary(status))
    return 0


def status_command(args: argparse.Namespace) -> int:
    if args.target is not None and _is_path(args.target):
        return mount_commands.status_of_path(args.target, args.json)
    message: dict[str, Any] = {"cmd": "status"}
    if args.target is not None:
        message["name"] = args.target
    repos = _call(message)["repos"]
    pins = cache_command.pinned_bytes(_home())
    for repo in repos:  # what `artifactfs pin` keeps of it
        if repo.get("name") in pins:
            repo["pinned_bytes"] = pins[repo["name"]]
    if args.json:
        print(json.dumps(repos, indent=2))
    else:
        _table(
            repos,
            ["name", "state", "commit", "files", "changed", "bytes_fetched", "mount", "error"],
        )
        cache_command.say_pinned(repos)
        _say_quarantined()
    return 0


def _say_quarantined() -> None:
    """Damaged blobs found so far (by reads or ``verify``) are worth a line of their own."""
    from ..cas import ContentStore

    home = _home()
    count = ContentStore(home.cas_dir).quarantined()
    if count:
        print(
            f"{count} damaged blob(s) quarantined in {home.cas_dir / 'quarantine'}"
            " (fetched again when read; see artifactfs verify)"
        )


def list_repos(args: argparse.Namespace) -> int:
    repos = _call({"cmd": "status"})["repos"]
    if args.json:
        print(json.dumps([{k: r[k] for k in ("name", "source", "ref", "mount")} for r in repos]))
    else:
        _table(repos, ["name", "state", "source", "ref", "mount"])
    return 0


def unmount_command(args: argparse.Namespace) -> int:
    if _is_path(args.target):
        return mount_commands.unmount_path(args.target, args.lazy)
    _call({"cmd": "unmount", "name": args.target})
    return 0


def remove_repo(args: argparse.Namespace) -> int:
    answer = _call({"cmd": "remove", "name": args.name, "purge": args.purge})
    for path in answer.get("removed", []):
        print(f"removed {path}")
    return 0


# -- output ----------------------------------------------------------------------------------------


class _Progress:
    """One updating line on a terminal; nothing at all otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.shown = False

    def __call__(self, status: dict[str, Any]) -> None:
        if self.tty:
            fetched = _bytes(status.get("bytes_fetched") or 0)
            sys.stderr.write(f"\r{status.get('name')}: {status.get('state')}, {fetched} received ")
            sys.stderr.flush()
            self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


def _summary(status: dict[str, Any]) -> str:
    name, mount = status.get("name"), status.get("mount")
    if status.get("state") == "ready":
        commit = (status.get("commit") or "")[:12]
        return f"{name}: ready at {commit} ({status.get('files')} files) on {mount}"
    return f"{name}: {status.get('state')} on {mount}"


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        print("no repositories")
        return
    cells = [[("-" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    cells = [[c if len(c) <= 60 else c[:57] + "..." for c in line] for line in cells]
    header = [c.upper() for c in columns]
    widths = [max(len(x) for x in column) for column in zip(header, *cells, strict=False)]
    for line in [header, *cells]:
        print(
            "  ".join(
                value.ljust(width) for value, width in zip(line, widths, strict=True)
            ).rstrip()
        )
