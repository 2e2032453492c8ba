"""``mount`` (one mount in the foreground, no daemon), and ``unmount``/``status`` given a
mount point instead of a repository name."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import UserError


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
        metavar="SECONDS",
        help="give up on a silent server after this long; reads then fail with EIO (also "
        "ARTIFACTFS_IO_TIMEOUT, fetch.io_timeout in config.toml; default 60)",
    )
    mount.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users, root included, read the mount (a user other than root needs "
        "user_allow_other in /etc/fuse.conf)",
    )
    mount.add_argument(
        "--offline",
        action="store_true",
        help="send nothing to the origin: a branch or tag shows the commit it last resolved to "
        "in this state home, and reads of bytes not stored fail at once (also "
        "ARTIFACTFS_OFFLINE=1; for hf:// sources also HF_HUB_OFFLINE=1)",
    )
    writes = mount.add_mutually_exclusive_group()
    writes.add_argument(
        "--writable",
        dest="writable",
        action="store_const",
        const=True,
        default=None,
        help="a writable workspace: changes are kept under the state home, per mount point "
        "(the default for git sources)",
    )
    writes.add_argument(
        "--read-only",
        dest="writable",
        action="store_const",
        const=False,
        help="refuse every change with EROFS (the default for hf:// sources)",
    )
    mount.add_argument(
        "--depth",
        metavar="N",
        default="1",
        help="a writable mount's git directory holds the last N commits of history (their "
        "commits and trees; file contents fetched when git needs them); default 1",
    )
    mount.add_argument(
        "--require-commit",
        metavar="SHA",
        help="become ready only if the ref resolves to this full commit id (else fail, saying"
        " what it resolved to): a verified source for CI",
    )
    mount.add_argument(
        "--cache-max-size",
        metavar="SIZE",
        help="the blob cache's size cap, e.g. 10G, 500M, or bytes; least recently used blobs "
        "are evicted past it (also ARTIFACTFS_CACHE_MAX_SIZE, cache.max_size in config.toml; "
        "default 10%% of the state "
        "home's file system, at least 1 GiB, at most 10 GiB)",
    )
    mount.add_argument(
        "--record-profile",
        metavar="FILE",
        help="write the paths opened through the mount to FILE, in the order they were first "
        "opened (an access profile for prefetch --profile and add-repo --profile)",
    )
    mount.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more output (twice: debug; also ARTIFACTFS_LOG_LEVEL, log.level in config.toml)",
    )
    # for the daemon's workers only
    mount.add_argument("--name", help=argparse.SUPPRESS)
    mount.add_argument("--control-socket", help=argparse.SUPPRESS)
    mount.add_argument("--token-stdin", action="store_true", help=argparse.SUPPRESS)
    mount.set_defaults(run=mount_foreground)


def mount_foreground(args: argparse.Namespace) -> int:
    from ..mount.launch import WorkerOptions, launch
    from ..sources.spec import check_depth

    depth = check_depth(args.depth)
    options = WorkerOptions(
        source=args.source,
        mountpoint=args.mountpoint,
        ref=args.ref,
        token_file=args.token_file,
        token_stdin=args.token_stdin,
        keep_failed=args.keep_failed,
        io_timeout=args.io_timeout,
        allow_other=args.allow_other,
        verbose=args.verbose,
        name=args.name,
        control_socket=args.control_socket,
        offline=args.offline,
        writable=args.writable,
        require_commit=args.require_commit,
        cache_max_size=args.cache_max_size,
        record_profile=args.record_profile,
        depth=depth,
    )
    return launch(options)


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
    from .mount_status import read_status

    report = read_status(Path(path_text))
    if as_json:
        print(json.dumps(report, sort_keys=True))
    else:
        width = max(len(key) for key in report)
        for key, value in report.items():
            print(f"{key:<{width}}  {'-' if value is None else value}")
    return 0
