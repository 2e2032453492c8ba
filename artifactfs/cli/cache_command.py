"""``artifactfs cache du|gc|evict``, ``pin`` and ``unpin``: the store's lifecycle by hand.

They work on the state home directly (the CAS, ``cas/usage.sqlite``, the daemon's
``registry.sqlite`` and the snapshots), so they need no daemon and are safe beside one: the
store is shared by processes by design (cas/eviction.py, cas/gc.py say how). ``pin`` reads the
files it pins through the repository's mount to fetch what is missing, so that the fetch goes
through the worker like any read (verified, coalesced, with its credentials).

Which blobs belong to which repository: the snapshot of each registered repository's current
commit (``snapshots/``). What ``gc`` keeps: those, pinned blobs, and blobs of workspaces
(``_workspace_digests``; none until the writable workspace stores blobs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..cas.digests import Digest
from ..cas.eviction import CachePolicy, format_size, parse_size
from ..errors import UserError
from ..home import ArtifactHome
from ..settings import Settings
from .clone_command import live_clone_pins
from .repositories import home as _home
from .repositories import known as _known
from .repositories import registered as _repositories
from .repositories import snapshot_digests as _snapshot_digests


def add_parsers(commands: Any) -> None:
    cache = commands.add_parser(
        "cache",
        help="show, collect or shrink the blob cache (du, gc, evict)",
        description="The blob cache (the content-addressed store shared by every mount of "
        "this state home). No daemon needed; safe while mounts serve.",
    )
    actions = cache.add_subparsers(dest="action", required=True, metavar="ACTION")
    du = actions.add_parser(
        "du",
        help="bytes by repository, shared, partial, pinned, evictable",
        description="Bytes the cache holds, by registered repository (its current commit), "
        "shared by several, referenced by none, partial downloads, pinned, and evictable.",
    )
    du.add_argument("--json", action="store_true", help="print one JSON object")
    du.set_defaults(run=cache_du)
    gc = actions.add_parser(
        "gc",
        help="remove blobs no registered repository, pin or workspace references",
        description="Remove blobs and partial downloads that no registered repository's "
        "current commit, pin or workspace references, and what crashed writers left "
        "(temporaries, stale partials, claims). Open files, fetches in progress and blobs "
        "published while it runs are kept.",
    )
    gc.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    gc.add_argument("--json", action="store_true", help="print one JSON object")
    gc.set_defaults(run=cache_gc)
    evict = actions.add_parser(
        "evict",
        help="evict least recently used blobs down to SIZE",
        description="Evict least recently used blobs and partial downloads, never pinned or "
        "open ones, until the cache holds at most SIZE (e.g. 2G, 500M, 0).",
    )
    evict.add_argument("--to", required=True, metavar="SIZE", help="e.g. 10G, 500M, bytes")
    evict.set_defaults(run=cache_evict)

    pin = commands.add_parser(
        "pin",
        help="keep a repository's (or some paths') blobs whatever the cache's cap",
        description="Pin the blobs of NAME's current commit (or of PATHs in it: files, or "
        "directories and all below) so that eviction never removes them, and fetch those "
        "missing, through its mount. Pin again after a refresh to pin the new commit's.",
    )
    pin.add_argument("name", metavar="NAME")
    pin.add_argument("paths", metavar="PATH", nargs="*", help="paths in the repository")
    pin.add_argument("--no-fetch", action="store_true", help="pin only; fetch nothing now")
    pin.set_defaults(run=pin_command)
    unpin = commands.add_parser(
        "unpin", help="drop NAME's pins", description="Drop every pin of NAME."
    )
    unpin.add_argument("name", metavar="NAME")
    unpin.set_defaults(run=unpin_command)


# -- the daemon's and a mount's cap -------------------------------------------------------------


def daemon_cache_policy(settings: Settings, home: ArtifactHome) -> CachePolicy:
    """The daemon's cap (the setting ``cache.max_size``); its workers inherit it through
    ``ARTIFACTFS_CACHE_MAX_SIZE`` (``Settings.export``: so a restarted worker, or a spare
    started before a request, has the same)."""
    return CachePolicy.of(settings["cache.max_size"], home.root)


async def serve_with_store_upkeep(serve: Any, home: ArtifactHome, policy: CachePolicy) -> None:
    """Run the daemon (``serve``) beside the store's upkeep: the usage table checked against
    the disk at start, eviction whenever the recorded total passes the cap."""
    import trio

    from ..cas.upkeep import keep_store

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: keep_store(home.cas_dir, policy, reconcile_at_start=True))
        await serve()
        nursery.cancel_scope.cancel()


# -- what references what ---------------------------------------------------------------------


def _workspace_digests(home: ArtifactHome) -> set[tuple[str, str]]:
    """Blobs a repository's workspace (its overlay, under ``<home>/repos/<name>/``) still
    references: gc keeps them. The hook for the writable workspace; it stores no CAS blobs yet,
    so there are none."""
    return set()


def _key(digest: Digest) -> tuple[str, str]:
    return digest.algorithm.name, digest.hex


# -- cache du -----------------------------------------------------------------------------------


def cache_du(args: argparse.Namespace) -> int:
    from ..cas.usage import UsageDB

    home = _home()
    if not home.cas_dir.is_dir():
        raise UserError(f"no cache at {home.cas_dir}")
    repos = _repositories(home)
    owners: dict[tuple[str, str], list[str]] = {}
    for repo in repos:
        if repo.snapshot is not None:
            for key in _snapshot_digests(repo.snapshot):
                owners.setdefault(key, []).append(repo.name)
    db = UsageDB(home.cas_dir)
    try:
        pinned = db.pinned()
        stored = db.meta("max_size")
        reconciled = db.meta("reconciled") is not None
        by_repo = {repo.name: {"bytes": 0, "unique": 0} for repo in repos}
        totals = dict.fromkeys(
            ("total", "blobs", "shared", "unreferenced", "partial", "pinned", "evictable"), 0
        )
        for entry in db.entries():
            key = _key(entry.digest)
            totals["total"] += entry.size
            if entry.partial:
                totals["partial"] += entry.size
            else:
                totals["blobs"] += entry.size
            if key in pinned:
                totals["pinned"] += entry.size
            else:
                totals["evictable"] += entry.size
            names = owners.get(key, [])
            if not names:
                totals["unreferenced"] += entry.size
            elif len(names) > 1:
                totals["shared"] += entry.size
            for name in names:
                by_repo[name]["bytes"] += entry.size
                if len(names) == 1:
                    by_repo[name]["unique"] += entry.size
    finally:
        db.close()
    cap = int(stored) if stored else CachePolicy.resolve(None, home.root).max_size
    if args.json:
        print(json.dumps({**totals, "cap": cap, "repositories": by_repo}, sort_keys=True))
        return 0
    rows = [(name, usage["bytes"], usage["unique"]) for name, usage in by_repo.items()]
    width = max([len("repository")] + [len(name) for name, _, _ in rows])
    print(f"{'repository':<{width}}  {'cached':>10}  {'only its own':>12}")
    for name, total, unique in rows:
        print(f"{name:<{width}}  {format_size(total):>10}  {format_size(unique):>12}")
    print()
    for label, field_name in (
        ("shared by several repositories", "shared"),
        ("referenced by no repository", "unreferenced"),
        ("partial downloads", "partial"),
        ("pinned", "pinned"),
        ("evictable (not pinned)", "evictable"),
    ):
        print(f"{label + ':':<32} {format_size(totals[field_name]):>10}")
    print(f"{'total:':<32} {format_size(totals['total']):>10}  (cap {format_size(cap)})")
    if not reconciled:
        print("(the usage table was never checked against the disk: run artifactfs cache gc)")
    return 0


# -- cache gc -----------------------------------------------------------------------------------


def cache_gc(args: argparse.Namespace) -> int:
    import time

    from ..cas.gc import collect
    from ..cas.usage import UsageDB

    home = _home()
    if not home.cas_dir.is_dir():
        raise UserError(f"no cache at {home.cas_dir}")
    started = time.time()  # before the references are read: see cas/gc.py
    repos = _repositories(home)
    if not repos:
        print(f"artifactfs: no repository is registered in {home.root}: only pinned blobs and "
              "open files are kept", file=sys.stderr)  # fmt: skip
    keep: set[tuple[str, str]] = set()
    for repo in repos:
        if repo.snapshot is not None:
            keep |= _snapshot_digests(repo.snapshot)
    keep |= _workspace_digests(home)
    db = UsageDB(home.cas_dir)
    try:
        registered = {repo.name for repo in repos}
        dropped = [] if args.dry_run else [
            owner for owner in db.pin_paths()
            if owner not in registered and not live_clone_pins(owner)
        ]  # fmt: skip
        for owner in dropped:  # pins of repositories removed since
            db.unpin(owner)
        keep |= db.pinned()
    finally:
        db.close()
    report = collect(home.cas_dir, lambda d: _key(d) in keep, args.dry_run, started)
    if args.json:
        print(json.dumps({**report.as_json(), "dry_run": args.dry_run}, sort_keys=True))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{verb} {report.removed} blob(s) ({format_size(report.freed)}) and "
        f"{report.partials_removed} partial download(s) "
        f"({format_size(report.partial_bytes_freed)}); kept {report.kept_referenced} "
        f"referenced and {report.kept_in_use} in use"
        + ("" if args.dry_run else f"; {report.leftovers} leftover file(s) removed")
    )
    for owner in dropped:
        print(f"dropped the pins of {owner} (no longer registered)")
    return 0


# -- cache evict --------------------------------------------------------------------------------


def cache_evict(args: argparse.Namespace) -> int:
    from ..cas.eviction import evict
    from ..cas.usage import UsageDB, reconcile

    try:
        target = parse_size(args.to)
    except ValueError as exc:
        raise UserError(f"--to: {exc}") from None
    home = _home()
    if not home.cas_dir.is_dir():
        raise UserError(f"no cache at {home.cas_dir}")
    db = UsageDB(home.cas_dir)
    try:
        if db.meta("reconciled") is None:  # blobs an older artifactfs stored have no rows yet
            reconcile(home.cas_dir, db)
        report = evict(home.cas_dir, db, target)
    finally:
        db.close()
    print(
        f"evicted {report.removed} blob(s) ({format_size(report.freed)}): the cache holds "
        f"{format_size(report.after)}"
        + (f" ({report.busy} open or being fetched were kept)" if report.busy else "")
        + (" (the rest is pinned)" if report.after > target and not report.busy else "")
    )
    return 0


# -- pins ---------------------------------------------------------------------------------------


def _files_under(snapshot: Path, paths: list[str], name: str) -> Iterator[tuple[str, Digest]]:
    """(path, digest) of every file and symlink at or below ``paths`` ('' is the root)."""
    from ..snapshot import ROOT_INODE, Kind, SnapshotIndex

    index = SnapshotIndex(snapshot)
    try:
        for given in paths:
            row = index.get(ROOT_INODE)
            for part in [p for p in given.split("/") if p]:
                if row is None or part in (".", ".."):
                    row = None
                    break
                row = index.lookup(row.inode, os.fsencode(part))
            if row is None:
                raise UserError(f"{name} has no path {given!r}")
            stack = [(row, given.strip("/"))]
            while stack:
                entry, path = stack.pop()
                if entry.kind in (Kind.DIRECTORY, Kind.SUBMODULE):
                    after = 0
                    while True:
                        children = index.children(entry, after)
                        if not children:
                            break
                        for child in children:
                            name_text = os.fsdecode(child.name)
                            stack.append((child, f"{path}/{name_text}" if path else name_text))
                        after = children[-1].inode
                elif entry.kind.has_blob and (entry.oid is not None or entry.sha256 is not None):
                    yield path, index.digest_of(entry)
    finally:
        index.close()


def pin_command(args: argparse.Namespace) -> int:
    from ..cas.store import ContentStore
    from ..cas.usage import UsageDB

    home = _home()
    repo = _known(home, args.name)
    if repo.snapshot is None:
        raise UserError(f"{args.name} is not prepared yet ({repo.state}): pin it once it is ready")
    paths = [p.strip("/") for p in args.paths] or [""]
    files = dict(_files_under(repo.snapshot, paths, args.name))
    db = UsageDB(home.cas_dir)
    try:
        db.set_pins(args.name, paths, files.values())
    finally:
        db.close()
    store = ContentStore(home.cas_dir)
    missing = [path for path, digest in files.items() if not store.contains(digest)]
    fetched = failed = 0
    if missing and not args.no_fetch:
        from .prefetch_command import check_mounted, fetch_by_worker, read_through

        mountpoint = Path(repo.mountpoint)
        try:
            check_mounted(mountpoint, args.name)
        except UserError as exc:  # the pins hold already: say so, and why nothing came
            raise UserError(f"pinned {len(files)} file(s), but fetched nothing: {exc}") from None
        progress = sys.stderr.isatty()
        report = fetch_by_worker(home, args.name, missing, progress)
        if report is None:  # a worker that does not take the request: read through its mount
            report = read_through(mountpoint, missing, progress, walk=False)
        fetched, failed = report.files, report.failed
    pinned_bytes = sum(store.size_of(d) or 0 for d in set(files.values()))
    print(
        f"pinned {len(files)} file(s) of {args.name} ({format_size(pinned_bytes)} stored)"
        + (f"; fetched {fetched} missing" if fetched else "")
        + (
            f"; {len(missing)} not stored yet (fetched when read)"
            if missing and args.no_fetch
            else ""
        )
    )
    if failed:
        print(f"artifactfs: {failed} file(s) could not be fetched (see the mount's log); they "
              "stay pinned and are kept once read", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def unpin_command(args: argparse.Namespace) -> int:
    from ..cas.usage import UsageDB

    home = _home()
    if not home.cas_dir.is_dir():
        raise UserError(f"no cache at {home.cas_dir}")
    db = UsageDB(home.cas_dir)
    try:
        if args.name not in db.pin_paths():
            raise UserError(f"{args.name} has nothing pinned")
        removed = db.unpin(args.name)
    finally:
        db.close()
    print(f"unpinned {removed} blob(s) of {args.name}")
    return 0


def pinned_bytes(home: ArtifactHome) -> dict[str, int]:
    """Bytes stored of each repository's pins (for ``status``)."""
    from ..cas.usage import UsageDB

    if not (home.cas_dir / "usage.sqlite").exists():
        return {}
    db = UsageDB(home.cas_dir)
    try:
        return db.pinned_bytes()
    finally:
        db.close()


def say_pinned(repos: list[dict[str, Any]]) -> None:
    """A line per repository with pins, under ``status``'s table."""
    for repo in repos:
        if "pinned_bytes" in repo:
            print(f"{repo['name']}: {format_size(int(repo['pinned_bytes']))} pinned")
