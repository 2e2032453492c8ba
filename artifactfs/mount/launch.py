"""Assemble and run one mount worker: the one way a worker starts.

``artifactfs mount`` (cli/mount_commands.py) and a spare worker taking its mount from the
daemon (daemon/spare_child.py) both describe the worker as ``WorkerOptions`` and call
``launch``. Everything that makes a process a well-behaved worker happens here, in this order:

1. everything that can be checked without the network is checked (SOURCE, ``--ref``, the
   timeout, ``--allow-other``, ``/dev/fuse``, the mount point, the state home), so bad input
   costs one line and exit status 2 before anything is created;
2. the token is read (from stdin when the daemon hands one over) and the token variables leave
   the environment, so no child process (ssh, git upload-pack) inherits them;
3. logging goes to the mount's log file;
4. the stop signals are blocked until the worker's loop can handle them (threads started from
   here on inherit the mask), so none can kill the process with the mount up;
5. sockets get ``--io-timeout`` (dulwich's and urllib3's sockets take the process default);
6. the head start opens the source and starts the first prepare, while the worker imports
   trio and pyfuse3 and mounts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..cas.eviction import CachePolicy
from ..cas.usage import UsageRecorder
from ..errors import UserError
from ..home import ArtifactHome, default_home
from ..logs import configure
from ..settings import flags_of, resolve, verbosity
from ..sources import SourceSettings, check_commit_id, check_ref, parse_source
from ..sources.counters import FetchCounters
from ..sources.credentials import TOKEN_ENV, TOKEN_FILE_ENV, CredentialProvider
from ..sources.registry import kind_of
from ..sources.spec import check_depth
from .mountpoints import check_fuse_device, check_mountpoint
from .options import check_allow_other
from .profile import check_profile_path

if TYPE_CHECKING:
    from ..tier.access import TierAccess


@dataclass(frozen=True)
class WorkerOptions:
    """What one worker is asked to do, before any of it is checked."""

    source: str
    mountpoint: str
    ref: str | None = None
    token_file: str | None = None
    token_stdin: bool = False
    """Read a token from stdin (the daemon hands one over this way, never in argv)."""
    keep_failed: bool = False
    io_timeout: float | None = None
    """``--io-timeout``; None: the setting ``fetch.io_timeout`` (settings.py)."""
    allow_other: bool = False
    verbose: int = 0
    name: str | None = None
    """The repository's name, when the daemon runs this worker."""
    control_socket: str | None = None
    """Where the daemon talks to this worker (daemon mode)."""
    offline: bool = False
    """Send nothing to the origin (also ``ARTIFACTFS_OFFLINE=1``; Hub sources: also
    ``HF_HUB_OFFLINE=1``)."""
    writable: bool | None = None
    """A writable workspace (``--writable``), read-only (``--read-only``), or None: the
    kind's default (git writable, the Hub read-only) for a foreground mount; read-only for a
    daemon's worker (``name`` set) until the daemon passes its repository's choice."""
    require_commit: str | None = None
    """Become ready only if the ref resolves to this commit (sources/required.py)."""
    cache_max_size: str | None = None
    """``--cache-max-size``: the store's cap (else the setting ``cache.max_size``, else a
    share of the home's file system; cas/eviction.py)."""
    record_profile: str | None = None
    """``--record-profile FILE``: write the paths opened, in order (mount/profile.py)."""
    depth: int = 1
    """``--depth N``: the commits of history a writable git mount's git directory holds."""

    def command_line(self) -> list[str]:
        """The ``artifactfs`` arguments that ask for this worker (what ``ps`` shows)."""
        arguments = ["mount", self.source, self.mountpoint]
        if self.keep_failed:
            arguments.append("--keep-failed")
        for flag, value in (
            ("--name", self.name),
            ("--control-socket", self.control_socket),
            ("--ref", self.ref),
            ("--token-file", self.token_file),
            ("--require-commit", self.require_commit),
        ):
            if value is not None:
                arguments += [flag, value]
        if self.io_timeout is not None:
            arguments += ["--io-timeout", repr(self.io_timeout)]
        if self.token_stdin:
            arguments.append("--token-stdin")
        if self.allow_other:
            arguments.append("--allow-other")
        if self.offline:
            arguments.append("--offline")
        if self.cache_max_size is not None:
            arguments += ["--cache-max-size", self.cache_max_size]
        if self.record_profile is not None:
            arguments += ["--record-profile", self.record_profile]
        if self.writable is not None:
            arguments.append("--writable" if self.writable else "--read-only")
        if self.depth != 1:
            arguments += ["--depth", str(self.depth)]
        arguments += ["-v"] * self.verbose
        return arguments

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, fields: Mapping[str, Any]) -> WorkerOptions:
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in fields.items() if key in known})


def launch(options: WorkerOptions, stdin: IO[str] | None = None) -> int:
    """Check ``options``, mount, serve until unmounted or signalled; the exit status.
    Raises ``UserError`` for bad input (nothing is mounted or created then)."""
    ref = check_ref(options.ref)
    spec = parse_source(options.source).with_ref(ref)
    require_commit = check_commit_id(options.require_commit)
    home = ArtifactHome(default_home())
    try:  # flag > variable > config.toml > default; a daemon's worker has its variables
        given = resolve(home.root, flags_of("mount", options))  # same names as its flags
    except ValueError as exc:
        raise UserError(str(exc)) from None
    io_timeout: float = given["fetch.io_timeout"]
    depth = check_depth(options.depth)
    if options.allow_other:
        check_allow_other()
    check_fuse_device()
    mountpoint = check_mountpoint(options.mountpoint)
    home.ensure_usable()
    temp_dir = home.temp_dir
    try:
        cache_policy = CachePolicy.of(given["cache.max_size"], home.root)
        profile = check_profile_path(options.record_profile) if options.record_profile else None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    writable = options.writable
    if writable is None:  # the daemon always says; a foreground mount takes the kind's default
        writable = kind_of(spec).writable_by_default
    workspace = home.workspace_dir(options.name) if options.name else home.workspace_for(mountpoint)
    credentials = _credentials(options, stdin or sys.stdin)
    given.export(os.environ, {"cache.max_size": cache_policy.max_size})  # for the layers below
    configure(home.log_file_for(mountpoint), verbosity(given["log.level"]))
    logging.getLogger(__name__).info(
        "settings: %s", given.summary({"cache.max_size": cache_policy.max_size})
    )

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    socket.setdefaulttimeout(io_timeout)
    settings = SourceSettings(
        ref=ref,
        cas_dir=home.cas_dir,
        snapshots_dir=home.snapshots_dir,
        temp_dir=temp_dir,
        credentials=credentials,
        counters=FetchCounters(),
        io_timeout=io_timeout,
        offline=given["fetch.offline"],
        require_commit=require_commit,
        usage=UsageRecorder(home.cas_dir),
        depth=depth,
        tier=_tier(given, home),
    )
    from .head_start import HeadStart

    head_start = HeadStart(spec, settings)  # works while the imports below happen

    from .worker import MountRequest, run

    request = MountRequest(
        spec,
        ref,
        mountpoint,
        home,
        options.keep_failed,
        name=options.name,
        control_socket=Path(options.control_socket) if options.control_socket else None,
        allow_other=options.allow_other,
        cache_policy=cache_policy,
        record_profile=profile,
        workspace=workspace if writable else None,
        checkpoint_interval=float(given["checkpoint.interval"] or 0),
    )
    return run(request, head_start)


def _tier(given: Mapping[str, Any], home: ArtifactHome) -> TierAccess | None:
    """The shared tier, if ``tier.url`` names one (its modules load only then)."""
    if not given["tier.url"]:
        return None
    from ..tier.access import TierAccess

    try:  # AWS_ENDPOINT_URL is checked here, as the settings were
        return TierAccess.from_settings(given, home.root, home.cas_dir)
    except ValueError as exc:
        raise UserError(f"AWS_ENDPOINT_URL: {exc}") from None


def _credentials(options: WorkerOptions, stdin: IO[str]) -> CredentialProvider:
    """Where this mount's token comes from; the token variables then leave our environment,
    so that no child process (ssh, git upload-pack) inherits them."""
    token = stdin.read().strip() if options.token_stdin else None
    token_file = os.path.abspath(options.token_file) if options.token_file else None
    provider = CredentialProvider(token=token or None, token_file=token_file)
    provider.check()
    for variable in (TOKEN_ENV, TOKEN_FILE_ENV):
        os.environ.pop(variable, None)
    return provider
