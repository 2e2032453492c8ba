"""``mount`` (one mount in the foreground, no daemon), and ``unmount``/``status`` given a
mount point instead of a repository name."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import UserError

MAX_IO_TIMEOUT = 86400.0


def add_parsers(commands: Any) -> None:
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
        help="hf://org/name[@rev], hf://datasets/org/name[@rev], or a git URL (git://, "
        "http(s)://, ssh://, file://) or local repository path",
    )
    mount.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing empty directory")
    mount.add_argument("--ref", help="branch, tag or commit to show (default: the remote HEAD)")
    mount.add_argument(
        "--token-file",
        metavar="PATH",
        help="file holding an access token for an http(s) remote, read at each use "
        "(default: $ARTIFACTFS_GIT_TOKEN)",
    )
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
        "--allow-other",
        action="store_true",
        help="let other users, root included, read the mount (a user other than root needs "
        "user_allow_other in /etc/fuse.conf)",
    )
    mount.add_argument(
        "-v", "--verbose", action="count", default=0, help="more output (twice: debug)"
    )
    # for the daemon's workers only
    mount.add_argument("--name", help=argparse.SUPPRESS)
    mount.add_argument("--control-socket", help=argparse.SUPPRESS)
    mount.add_argument("--token-stdin", action="store_true", help=argparse.SUPPRESS)
    mount.set_defaults(run=mount_foreground)


def mount_foreground(args: argparse.Namespace) -> int:
    from ..home import ArtifactHome, default_home
    from ..logs import configure
    from ..mount.mountpoints import check_fuse_device, check_mountpoint
    from ..mount.options import check_allow_other
    from ..sources.spec import HubSourceSpec, check_ref, parse_source, with_ref

    ref = check_ref(args.ref)
    spec = with_ref(parse_source(args.source), ref)
    if not 0 < args.io_timeout <= MAX_IO_TIMEOUT:  # also refuses nan and inf
        raise UserError(f"--io-timeout must be between 0 and {MAX_IO_TIMEOUT:.0f} seconds")
    if args.allow_other:
        check_allow_other()
    check_fuse_device()
    mountpoint = check_mountpoint(args.mountpoint)
    home = ArtifactHome(default_home())
    try:
        home.ensure()
    except OSError as exc:
        raise UserError(f"cannot use state directory {home.root}: {exc.strerror}") from None
    credentials = _credentials(args)
    explicit = credentials.credentials() if args.token_stdin or args.token_file else None
    hub_token = explicit.token if explicit and isinstance(spec, HubSourceSpec) else None
    configure(home.log_file_for(mountpoint), args.verbose)
    control = Path(args.control_socket) if args.control_socket else None

    import signal
    import socket

    from ..mount.head_start import HeadStart

    # Stop signals wait until the worker can handle them (it unblocks them), so that none can
    # kill the process with the mount up; threads started from here on inherit the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    socket.setdefaulttimeout(args.io_timeout)
    head_start = HeadStart(spec, ref, home, credentials, hub_token)  # works during the import

    from ..mount.worker import MountRequest, run

    request = MountRequest(
        spec,
        ref,
        mountpoint,
        home,
        args.keep_failed,
        name=args.name,
        control_socket=control,
        io_timeout=args.io_timeout,
        allow_other=args.allow_other,
    )
    return run(request, head_start)


def _credentials(args: argparse.Namespace) -> Any:
    """Where this mount's token comes from; the token variables then leave our environment,
    so that no child process (ssh, git upload-pack) inherits them."""
    import os
    import sys

    from ..sources.credentials import TOKEN_ENV, TOKEN_FILE_ENV, CredentialProvider

    token = sys.stdin.read().strip() if args.token_stdin else None
    token_file = os.path.abspath(args.token_file) if args.token_file else None
    provider = CredentialProvider(token=token or None, token_file=token_file)
    provider.check()
    for variable in (TOKEN_ENV, TOKEN_FILE_ENV):
        os.environ.pop(variable, None)
    return provider


def unmount_path(path_text: str, lazy: bool) -> int:
    from ..mount.mountpoints import FS_TYPE, detach, is_stale, mount_at, remove_stale

    path = Path(path_text).absolute()
    if is_stale(path):
        remove_stale(path)
        return 0
    entry = mount_at(Path(path_text).resolve())
    if entry is None:
        raise UserError(f"{path} is not mounted")
    if entry.fs_type != FS_TYPE:
        raise UserError(f"{path} is not an artifactfs mount (it is {entry.fs_type})")
    detach(entry.mountpoint, lazy=lazy)
    return 0


def status_of_path(path_text: str, as_json: bool) -> int:
    from ..status import read_status

    report = read_status(Path(path_text))
    if as_json:
        print(json.dumps(report, sort_keys=True))
    else:
        width = max(len(key) for key in report)
        for key, value in report.items():
            print(f"{key:<{width}}  {'-' if value is None else value}")
    return 0
