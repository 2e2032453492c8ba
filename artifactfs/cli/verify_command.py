"""``artifactfs verify [NAME ...] [--all] [--json]``: re-hash what the store holds.

With NAME, the blobs of that repository's current commit (asked of the daemon); with ``--all``,
every blob in the home's store (no daemon needed). Blobs that do not hash to their name are
quarantined (moved aside, never served again; the next read fetches them afresh) and listed.
Exit status 0 when nothing was damaged, 1 when something was (and was quarantined), 2 for bad
input.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import UserError

EXIT_DAMAGED = 1


def add_parser(commands: Any) -> None:
    verify = commands.add_parser(
        "verify",
        help="re-hash stored blobs; quarantine and report damaged ones",
        description="Re-hash the blobs of repositories (NAME, asked of the daemon) or of the "
        "whole store (--all). A blob that does not match its digest is moved to "
        "$ARTIFACTFS_HOME/cas/quarantine and fetched again when next read. Exit status 1 if "
        "anything was damaged.",
    )
    verify.add_argument("names", metavar="NAME", nargs="*", help="registered repositories")
    verify.add_argument("--all", action="store_true", help="every blob in the store")
    verify.add_argument("--json", action="store_true", help="print a JSON summary")
    verify.set_defaults(run=verify_command)


def verify_command(args: argparse.Namespace) -> int:
    from ..cas import ContentStore
    from ..cas.scrub import published, scrub
    from ..home import ArtifactHome, default_home

    if bool(args.names) == bool(args.all):
        raise UserError("name the repositories to verify, or give --all (not both)")
    home = ArtifactHome(default_home())
    if not home.cas_dir.is_dir():
        raise UserError(f"no store at {home.cas_dir}: nothing to verify")
    store = ContentStore(home.cas_dir)
    digests = list(published(store)) if args.all else _digests_of(home, args.names)
    progress = _Progress() if sys.stderr.isatty() and not args.json else None
    report = scrub(store, digests, progress)
    if progress is not None:
        progress.done()
    if args.json:
        print(json.dumps(report.as_json(), sort_keys=True))
    else:
        for damaged in report.damaged:
            print(f"damaged: {damaged.digest} (hashes to {damaged.actual}), moved to "
                  f"{damaged.quarantined}")  # fmt: skip
        print(
            f"verified {report.checked} blobs ({report.bytes} bytes): "
            f"{len(report.damaged)} damaged, {report.missing} not in the store"
        )
    return EXIT_DAMAGED if report.damaged else 0


def _digests_of(home: Any, names: list[str]) -> list[Any]:
    """The content digests of each repository's current commit, from its snapshot."""
    from ..daemon.client import call
    from ..snapshot import SnapshotIndex
    from ..snapshot.index import snapshot_path
    from ..sources import parse_source

    digests: list[Any] = []
    for name in names:
        (repo,) = call(home, {"cmd": "status", "name": name})["repos"]
        if not repo.get("commit"):
            raise UserError(f"{name} has no prepared commit yet ({repo.get('state')})")
        kind = parse_source(str(repo["source"])).kind
        path = snapshot_path(home.snapshots_dir, str(repo["commit"]), kind)
        if not path.exists():
            raise UserError(f"the snapshot of {name} ({path}) is not on disk")
        index = SnapshotIndex(path)
        try:
            digests.extend(index.content_digests())
        finally:
            index.close()
    return digests


class _Progress:
    """One updating line on a terminal."""

    def __call__(self, report: Any, total: int) -> None:
        done = report.checked + report.missing
        if done % 64 == 0 or done == total:
            sys.stderr.write(f"\rverifying: {done}/{total} blobs, {report.bytes >> 20} MiB ")
            sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")
