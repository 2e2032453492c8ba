"""``artifactfs tier status|push``: the shared tier (``tier.url``) of this state home, by hand.

``status`` reads only this home (``tier.sqlite`` and the store's table): how many blobs the
tier is known to hold and how much is waiting to go up, without a request to the tier, so it
answers at once when the tier is down. ``push`` uploads that backlog now, in the foreground
(what a mount's write-behind task does behind readers): before a node is retired, or after
``clone``, which uploads nothing itself. An unreachable tier is one line and exit status 1.

Neither needs the daemon, and both are safe beside running mounts: uploads are leased per
blob in the ledger (tier/ledger.py), so a mount and ``push`` never send the same blob at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..errors import UserError
from .repositories import home as _home

EXIT_UNREACHABLE = 1


def add_parsers(commands: Any) -> None:
    tier = commands.add_parser(
        "tier",
        help="the shared tier behind the blob cache (status, push)",
        description="The shared tier (tier.url: an S3 bucket or a shared directory) that "
        "every node's blob cache reads through and uploads to. No daemon needed.",
    )
    actions = tier.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser(
        "status",
        help="where the tier is, what it holds of this home's blobs, what waits to go up",
        description="Where the tier is (without credentials), how many of this home's blobs "
        "it is known to hold, and the backlog (blobs in the cache not uploaded yet). Asks "
        "nothing of the tier.",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(run=tier_status)
    push = actions.add_parser(
        "push",
        help="upload the backlog to the tier now",
        description="Upload every blob of the cache the tier is not known to hold, now, in "
        "the foreground. Exit status 1 if the tier cannot be reached or an upload failed.",
    )
    push.set_defaults(run=tier_push)


def _access(args: argparse.Namespace) -> tuple[Any, Any]:
    """The home and its tier access; ``UserError`` when no tier is configured."""
    from ..tier.access import TierAccess

    home = _home()
    tier = TierAccess.from_settings(args.settings, home.root, home.cas_dir)
    if tier is None:
        raise UserError(
            "no tier is configured (set tier.url in config.toml or ARTIFACTFS_TIER_URL)"
        )
    home.ensure_usable()
    return home, tier


def tier_status(args: argparse.Namespace) -> int:
    from ..cas.eviction import format_size

    _, tier = _access(args)
    try:
        ledger = tier.ledger
        held = ledger.held_count()
        count, size = ledger.backlog_size()
    finally:
        tier.close()
    report = {
        "tier": tier.description,
        "held": held,
        "backlog": count,
        "backlog_bytes": size,
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"tier:     {tier.description}")
    print(f"held:     {held} blob{'s' if held != 1 else ''} of this home")
    print(f"backlog:  {count} blob{'s' if count != 1 else ''}, {format_size(size)} to upload")
    return 0


def tier_push(args: argparse.Namespace) -> int:
    from ..cas import ContentStore
    from ..cas.eviction import format_size
    from ..cas.usage import UsageDB, reconcile
    from ..logs import configure
    from ..settings import verbosity
    from ..tier.objects import TierError
    from ..tier.uploads import UploadReport, push

    home, tier = _access(args)
    configure(home.logs_dir / "tier.log", verbosity(args.settings["log.level"]))
    try:
        try:
            store = tier.store
            store.head("blobs/")  # one request: is it there at all?
        except TierError as exc:
            print(f"artifactfs: the tier cannot be reached: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
        # the store itself, not only its table: blobs a running worker has not recorded yet
        # (it writes its records every few seconds) or a killed one never recorded go too
        usage = UsageDB(home.cas_dir)
        try:
            reconcile(home.cas_dir, usage)
        finally:
            usage.close()
        ledger = tier.ledger
        total, total_size = ledger.backlog_size()
        shown = sys.stderr.isatty()
        last = [0.0]

        def progress(report: UploadReport) -> None:
            done = report.uploaded + report.already_there + report.gone + report.failed
            if shown and (time.monotonic() - last[0] >= 0.1 or done >= total):
                last[0] = time.monotonic()
                sys.stderr.write(
                    f"\rpushing: {done}/{total} blobs, {format_size(report.uploaded_bytes)}"
                    f" of {format_size(total_size)}\x1b[K"
                )
                sys.stderr.flush()

        report = push(store, ledger, ContentStore(home.cas_dir), progress)
        if shown:
            sys.stderr.write("\r\x1b[K")
    finally:
        tier.close()
    print(
        f"pushed {report.uploaded} blob{'s' if report.uploaded != 1 else ''}"
        f" ({format_size(report.uploaded_bytes)}) to {tier.description};"
        f" {report.already_there} there already"
    )
    if report.failed:
        print(
            f"artifactfs: {report.failed} upload{'s' if report.failed != 1 else ''} failed"
            f" (see {home.logs_dir / 'tier.log'}); run it again later",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    return 0
