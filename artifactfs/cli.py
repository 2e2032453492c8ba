"""The ``artifactfs`` command.

Bad input gets one line on stderr and a non-zero exit (``UserError``), never a traceback, and
is caught before anything is mounted or written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import UserError

EXIT_FAILED = 1
EXIT_USAGE = 2
MAX_IO_TIMEOUT = 86400.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="artifactfs",
        description="Mount a remote git repository at once; fetch only the bytes that are read.",
        epilog="State (blob cache, snapshots, logs) lives in $ARTIFACTFS_HOME "
        "(default: ~/.local/share/artifactfs).",
    )
    parser.add_argument("--version", action="version", version=f"artifactfs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount = commands.add_parser(
        "mount",
        help="mount SOURCE at MOUNTPOINT and serve it in the foreground",
        description="Mount SOURCE at MOUNTPOINT at once and serve it in the foreground until "
        "unmounted (artifactfs unmount, fusermount3 -u, SIGINT or SIGTERM). Operations wait "
        "until the tree is prepared; file contents are fetched on first read.",
    )
    mount.add_argument(
        "source",
        metavar="SOURCE",
        help="git://, http(s)://, ssh://, file:// URL or a local repository path",
    )
    mount.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing empty directory")
    mount.add_argument("--ref", help="branch, tag or commit to show (default: the remote HEAD)")
    mount.add_argument(
        "--keep-failed",
        action="store_true",
        help="if prepare fails, keep the mount in failed state (EIO, reason in the "
        "user.artifactfs.error xattr) instead of exiting; SIGHUP retries",
    )
    mount.add_argument(
        "--io-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up on a silent server after this long; reads then fail with EIO (default 60)",
    )
    mount.add_argument(
        "-v", "--verbose", action="count", default=0, help="more output (twice: debug)"
    )

    unmount = commands.add_parser("unmount", help="unmount an artifactfs mount point")
    unmount.add_argument("mountpoint", metavar="MOUNTPOINT")
    unmount.add_argument("--lazy", action="store_true", help="detach now even if the mount is busy")

    status = commands.add_parser("status", help="show the state of a mounted repository")
    status.add_argument("mountpoint", metavar="MOUNTPOINT")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _mount(args: argparse.Namespace) -> int:
    from .home import ArtifactHome, default_home
    from .logs import configure
    from .mount.mountpoints import check_mountpoint
    from .sources.spec import check_ref, parse_source

    spec = parse_source(args.source)
    ref = check_ref(args.ref)
    if not 0 < args.io_timeout <= MAX_IO_TIMEOUT:  # also refuses nan and inf
        raise UserError(f"--io-timeout must be between 0 and {MAX_IO_TIMEOUT:.0f} seconds")
    mountpoint = check_mountpoint(args.mountpoint)
    home = ArtifactHome(default_home())
    try:
        home.ensure()
    except OSError as exc:
        raise UserError(f"cannot use state directory {home.root}: {exc.strerror}") from None
    configure(home.log_file_for(mountpoint), args.verbose)

    import signal
    import socket

    from .mount.head_start import HeadStart

    # Stop signals wait until the worker can handle them (it unblocks them), so that none can
    # kill the process with the mount up; threads started from here on inherit the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    socket.setdefaulttimeout(args.io_timeout)
    head_start = HeadStart(spec, ref, home)  # talks to the origin while the next import runs

    from .mount.worker import MountRequest, run

    request = MountRequest(spec, ref, mountpoint, home, args.keep_failed)
    return run(request, head_start)


def _unmount(args: argparse.Namespace) -> int:
    from .mount.mountpoints import FS_TYPE, detach, is_stale, mount_at, remove_stale

    path = Path(args.mountpoint).absolute()
    if is_stale(path):
        remove_stale(path)
        return 0
    entry = mount_at(Path(args.mountpoint).resolve())
    if entry is None:
        raise UserError(f"{path} is not mounted")
    if entry.fs_type != FS_TYPE:
        raise UserError(f"{path} is not an artifactfs mount (it is {entry.fs_type})")
    detach(entry.mountpoint, lazy=args.lazy)
    return 0


def _status(args: argparse.Namespace) -> int:
    from .status import read_status

    report = read_status(Path(args.mountpoint))
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        width = max(len(key) for key in report)
        for key, value in report.items():
            print(f"{key:<{width}}  {'-' if value is None else value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"mount": _mount, "unmount": _unmount, "status": _status}
    try:
        return handlers[args.command](args)
    except UserError as exc:
        print(f"artifactfs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
