"""Where artifactfs keeps its state: ``$ARTIFACTFS_HOME`` or a per-user default.

Layout (everything may be lost to a crash at any instant without corrupting what is published):

- ``cas/``        verified, immutable blobs, shared by every mount of this home;
- ``snapshots/``  one SQLite index per commit (content-addressed, so shared too);
- ``registry.sqlite``  the daemon's repositories;
- ``mnt/<name>/`` default mount points of the daemon's repositories;
- ``repos/<name>/``  a daemon repository's workspace (overlay, upper files, git directory);
- ``workspaces/<mount>-<hash>/``  the workspace of a foreground mount, per mount point;
- ``run/``        the daemon's socket and lock, workers' control sockets, and ``logs/``.

The default is per user, so that anyone — not only root — can run ``mount`` and the daemon.
"""

from __future__ import annotations

import hashlib
import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

HOME_ENV = "ARTIFACTFS_HOME"


def default_home(environ: Mapping[str, str] | None = None) -> Path:
    """``$ARTIFACTFS_HOME``, else ``$XDG_DATA_HOME/artifactfs``, else ~/.local/share/artifactfs.

    A relative ``XDG_DATA_HOME`` is ignored, as the XDG spec says; so is a relative or empty
    ``HOME`` (``~`` is then our passwd entry's home): either would put the state wherever the
    command happens to run.
    """
    env = os.environ if environ is None else environ
    explicit = env.get(HOME_ENV)
    if explicit:
        return Path(os.path.expanduser(explicit)).absolute()
    xdg = env.get("XDG_DATA_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else _user_home(env) / ".local" / "share"
    return base / "artifactfs"


def _user_home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME", "")
    if os.path.isabs(home):
        return Path(home)
    try:  # no usable $HOME: a container run with --user, a cron job, env -i ...
        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        raise UserError(
            f"cannot tell where to keep state: $HOME is not set and uid {os.getuid()} has no"
            f" home directory; set {HOME_ENV}"
        ) from None


@dataclass(frozen=True)
class ArtifactHome:
    """The directories of one state home; ``ensure()`` creates them."""

    root: Path

    @property
    def cas_dir(self) -> Path:
        return self.root / "cas"

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def temp_dir(self) -> Path:
        """Scratch space of sources (packs being received), on the store's file system."""
        return self.root / "tmp"

    @property
    def registry_path(self) -> Path:
        return self.root / "registry.sqlite"

    @property
    def daemon_socket(self) -> Path:
        return self.run_dir / "daemon.sock"

    @property
    def daemon_lock(self) -> Path:
        return self.run_dir / "daemon.lock"

    @property
    def daemon_log(self) -> Path:
        return self.logs_dir / "daemon.log"

    def worker_socket(self, name: str) -> Path:
        return self.run_dir / "workers" / f"{name}.sock"

    def worker_stderr(self, name: str) -> Path:
        return self.logs_dir / f"worker-{name}.stderr"

    def default_mountpoint(self, name: str) -> Path:
        return self.root / "mnt" / name

    def workspace_dir(self, name: str) -> Path:
        """The workspace of the daemon's repository ``name``: its overlay and git directory."""
        return self.root / "repos" / name

    def workspace_for(self, mountpoint: Path) -> Path:
        """The workspace of a foreground mount with no name: one per absolute mount point, so
        that mounting at the same place again finds the changes made there."""
        return self.root / "workspaces" / self._tagged(mountpoint)

    def log_file_for(self, mountpoint: Path) -> Path:
        """One log per mount point, named so that a person can tell which is which."""
        return self.logs_dir / f"mount-{self._tagged(mountpoint)}.log"

    @staticmethod
    def _tagged(mountpoint: Path) -> str:
        """A name for a mount point that a person can tell apart from others."""
        tag = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:12]
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in mountpoint.name)[:40]
        return f"{stem or 'root'}-{tag}"

    def ensure(self) -> None:
        """Create the layout. What we create is private to its owner: the cache holds the
        contents of private repositories, and the run directory's sockets take orders. The
        root itself may be traversed but not listed (0711), so that other users can reach
        mount points in ``mnt/`` that were mounted with ``--allow-other``."""
        self.root.mkdir(mode=0o711, parents=True, exist_ok=True)
        for directory in (
            self.cas_dir,
            self.snapshots_dir,
            self.run_dir,
            self.logs_dir,
            self.run_dir / "workers",
        ):
            directory.mkdir(mode=0o700, exist_ok=True)
        self.run_dir.chmod(0o700)  # also when an older artifactfs made it
        self.temp_dir.mkdir(exist_ok=True)

    def ensure_usable(self) -> None:
        """``ensure``, or one line saying why the home cannot be used (``UserError``)."""
        try:
            self.ensure()
        except OSError as exc:
            raise UserError(f"cannot use state directory {self.root}: {exc.strerror}") from None
