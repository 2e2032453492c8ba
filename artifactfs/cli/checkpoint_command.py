"""``artifactfs checkpoint NAME [--to REF] [--force]`` and ``artifactfs restore NAME --from
REF [SOURCE]``: a registered repository's workspace to the shared tier, and back on another
node (docs/architecture.md, *Checkpoints*).

``checkpoint`` asks the repository's worker (its control socket), which holds off changes to
the mount while it captures, so the checkpoint is of one instant; with no worker running
nobody changes the workspace, and the command captures it itself. The pointer moves by
compare-and-swap: a node that did not see the last move of REF gets one line and exit 1, and
the pointer stays as the other node left it (``--to`` another name keeps this one's,
``restore`` under a new name shows the other's, ``--force`` replaces it).

``restore`` downloads and verifies everything before it writes anything, builds the
workspace beside its place and renames it in, then registers the repository at the
checkpoint's commit (``add-repo`` with that commit as its ref), so the mount's gate opens on
exactly the restored state. It refuses a name that is registered, or whose kept workspace
holds changes.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import shutil
import sys
from typing import Any

from ..errors import UserError

EXIT_FAILED = 1


def add_parsers(commands: Any) -> None:
    checkpoint = commands.add_parser(
        "checkpoint",
        help="send a repository's workspace changes to the shared tier",
        description="Checkpoint NAME's workspace (its changes, and its git directory: index, "
        "branches, commits) into the shared tier (tier.url), under REF (default NAME). Only "
        "what the tier lacks is sent. REF moves by compare-and-swap: if another node moved "
        "it since this one last saw it, nothing is replaced and the exit status is 1. A "
        "mounted repository's worker takes it (changes wait meanwhile) with the tier its "
        "daemon has (config.toml or the daemon's environment); with no worker running, this "
        "command takes it with its own settings.",
    )
    checkpoint.add_argument("name", metavar="NAME")
    checkpoint.add_argument("--to", dest="ref", metavar="REF", help="checkpoint name")
    checkpoint.add_argument(
        "--force",
        action="store_true",
        help="replace REF even if another node moved it since this one last saw it",
    )
    checkpoint.set_defaults(run=checkpoint_command)

    restore = commands.add_parser(
        "restore",
        help="bring a checkpoint back as a registered repository",
        description="Restore checkpoint REF from the shared tier as repository NAME (a new "
        "name here): its workspace exactly as checkpointed, mounted at the checkpoint's "
        "commit. SOURCE defaults to the one the checkpoint names (give it if that one needed "
        "credentials; tokens come from the environment as for add-repo).",
    )
    restore.add_argument("name", metavar="NAME")
    restore.add_argument("source", metavar="SOURCE", nargs="?")
    restore.add_argument("--from", dest="ref", metavar="REF", required=True)
    restore.add_argument("--mount", metavar="PATH", help="an existing empty directory")
    restore.add_argument("--token-file", metavar="PATH", help="file holding an access token")
    restore.add_argument(
        "--async", dest="async_", action="store_true", help="return once the mount point is up"
    )
    restore.set_defaults(run=restore_command)


def _checkpoint_name(text: str) -> str:
    from ..tier.keys import check_checkpoint_name

    try:
        return check_checkpoint_name(text)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _location(settings: Any) -> Any:
    from ..tier.location import location_from

    try:
        location = location_from(settings)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if location is None:
        raise UserError("no shared tier is set (tier.url, or ARTIFACTFS_TIER_URL)")
    return location


def checkpoint_command(args: argparse.Namespace) -> int:
    from .repositories import home as state_home
    from .repositories import known

    home = state_home()
    repo = known(home, args.name)
    ref = _checkpoint_name(args.ref or args.name)
    answer = _ask_worker(home, args.name, ref, args.force)
    if answer is None:  # no worker: nobody changes the workspace, take it from here
        answer = _take_here(home, args, repo, ref)
    if not answer.get("ok"):
        print(f"artifactfs: {answer.get('error')}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"checkpoint {answer['ref']} of {args.name}: commit {str(answer['commit'])[:12]}, "
        f"{answer['files']} file(s), {answer['sent']} object(s) sent "
        f"({answer['sent_bytes']} bytes), manifest {str(answer['manifest'])[:12]}"
    )
    return 0


def _ask_worker(home: Any, name: str, ref: str, force: bool) -> dict[str, Any] | None:
    from ..ipc import ProtocolError, request_blocking

    socket_path = home.worker_socket(name)
    if not socket_path.exists():
        return None
    message = {"cmd": "checkpoint", "name": ref, "force": force}
    try:
        answer = next(iter(request_blocking(str(socket_path), message)), None)
    except (FileNotFoundError, ConnectionRefusedError):
        return None  # a socket left by a worker that died
    except (OSError, ProtocolError) as exc:
        raise UserError(f"the worker of {name} stopped answering: {exc}") from None
    if answer is None:
        raise UserError(f"the worker of {name} did not answer")
    if not answer.get("ok") and str(answer.get("error", "")).startswith("unknown command"):
        raise UserError(f"the worker of {name} is too old to checkpoint: remount {name}")
    return dict(answer)


def _take_here(home: Any, args: argparse.Namespace, repo: Any, ref: str) -> dict[str, Any]:
    import trio

    from ..mount.checkpointing import Checkpointer, CheckpointFailed
    from ..redact import mask_userinfo
    from ..tier.objects import open_store

    location = _location(args.settings)
    workspace = home.workspace_dir(args.name)
    if not workspace.is_dir():
        raise UserError(f"{args.name} has no workspace to checkpoint (is it read-only?)")
    checkpointer = Checkpointer(
        workspace,
        lambda: open_store(location),
        location.url,
        mask_userinfo(repo.source),
        repo.ref,
        None,
    )
    try:
        done = trio.run(checkpointer.take, ref, args.force)
    except CheckpointFailed as exc:
        return {"ok": False, "error": str(exc), "stale": exc.stale}
    return {"ok": True, **vars(done)}


def restore_command(args: argparse.Namespace) -> int:
    from ..daemon.names import check_name
    from ..durable import syncfs
    from ..overlay.checkpoints import state as saved
    from ..overlay.checkpoints.restore import RestoreError, build, changed_paths, fetch
    from ..redact import mask_userinfo
    from ..tier.objects import TierError, open_store
    from .repositories import home as state_home
    from .repositories import registered

    check_name(args.name)
    ref = _checkpoint_name(args.ref)
    location = _location(args.settings)
    home = state_home()
    if any(repo.name == args.name for repo in registered(home)):
        return _fail(f"{args.name} is registered here already; restore under another name, "
                     f"or remove-repo {args.name} --purge first")  # fmt: skip
    final = home.workspace_dir(args.name)
    changed = changed_paths(final)
    if changed:
        return _fail(f"the kept workspace of {args.name} ({final}) holds {changed} changed "
                     "path(s); restore under another name, or remove it first")  # fmt: skip
    from ..daemon.client import call

    call(home, {"cmd": "status"})  # no daemon: say so before anything is fetched or written
    scratch = home.temp_dir / f"restore-{args.name}-{secrets.token_hex(4)}"
    try:
        try:
            home.ensure()
            fetched = fetch(open_store(location), ref, scratch / "blobs")
        except (RestoreError, TierError) as exc:
            return _fail(str(exc))
        except OSError as exc:
            return _fail(f"cannot restore {ref}: {exc}")
        manifest = fetched.manifest
        source = args.source or manifest.source
        if not source:
            return _fail(f"checkpoint {ref} names no source: give SOURCE")
        if mask_userinfo(source) != source:
            return _fail("give SOURCE without credentials (tokens come from the environment)")
        from ..sources import parse_source

        parse_source(source)  # a bad SOURCE: one line, before anything is written
        built = scratch / "workspace"
        try:
            build(fetched, built)
            state = saved.CheckpointState(location.url)
            state.etags[ref] = fetched.etag
            state.manifests[ref] = fetched.pointer.manifest
            state.held = manifest.digests() | {fetched.pointer.manifest}
            saved.save(built, state)
            syncfs(built)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # a kept workspace without changes: replaced
                final.rename(scratch / "old")
            try:
                built.rename(final)
            except OSError:
                if (scratch / "old").exists():
                    (scratch / "old").rename(final)  # as it was
                raise
        except (RestoreError, OSError) as exc:
            return _fail(f"cannot restore {ref}: {exc}")
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(scratch)
    print(f"restored checkpoint {ref} of {source} at {manifest.commit[:12]} as {args.name}")
    # a token goes only to a SOURCE the user named: the checkpoint's own is the tier's word
    return _register(args, source, manifest.commit, send_token=bool(args.source))


def _register(args: argparse.Namespace, source: str, commit: str, send_token: bool = True) -> int:
    """``add-repo NAME SOURCE --ref COMMIT``, writable, as the daemon takes it."""
    import os

    from ..daemon.client import call
    from ..sources import parse_source
    from .repositories import home as state_home

    message: dict[str, Any] = {
        "cmd": "add",
        "name": args.name,
        "source": source,
        "ref": commit,
        "async": args.async_,
        "writable": True,
    }
    if args.mount is not None:
        message["mount"] = os.path.abspath(args.mount)
    if args.token_file is not None:
        message["token_file"] = os.path.abspath(args.token_file)
    token = os.environ.get(parse_source(source).token_variable, "").strip() if send_token else ""
    if token:  # kept in the daemon's memory only, as add-repo does
        message["token"] = token
    status = call(state_home(), message).get("status") or {}
    if not args.async_ and status.get("state") == "failed":
        return _fail(f"{args.name} failed: {status.get('error')}")
    return 0


def _fail(message: str) -> int:
    print(f"artifactfs: {message}", file=sys.stderr)
    return EXIT_FAILED
