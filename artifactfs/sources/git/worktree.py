"""The git directory of a writable git mount (``base.Worktree``): a partial clone kept outside
the mount, behind a ``.git`` gitfile at the mount's root, that the real git CLI takes as is.

What ``attach`` makes under ``directory`` (the workspace's ``git/``):

- ``config``: a non-bare repository (``repositoryformatversion = 1``) whose ``origin`` is the
  source URL without credentials (``spec.strip_credentials``: git finds credentials by its own
  rules for the user's commands; ours are never written down), a promisor
  (``extensions.partialclone = origin``, ``partialclonefilter = blob:none``), so git fetches a
  blob it lacks from the origin itself when a command needs it;
- the commit and its trees in a **promisor pack** (``git_objects.py``). Prepare keeps the pack
  it received beside the snapshot (``snapshots/git-<commit>.pack``, content-addressed by commit
  like the snapshot, written atomically), and the git directory gets a hard link of it (a copy
  across file systems): no round trip in the common case. A snapshot from before packs were
  kept, or a kept pack lost, costs one depth-1 ``blob:none`` fetch of the commit;
- ``shallow`` listing the commit (depth 1: ``git log`` stops there instead of fetching history);
- with ``--depth N`` > 1, the commits and trees of the last N commits: one ``blob:none`` fetch
  with that depth, installed as another promisor pack as the tip's is, and ``shallow`` computed
  from that pack's commits (those whose parents are not all in it), never from the server's
  word. History that cannot be fetched (offline, the origin down) leaves depth 1 with a
  warning rather than failing the mount: the files and the tip are what a workspace needs, and
  the next attach online fetches it;
- ``HEAD`` on a local branch named like the origin's (``--ref`` a branch: that branch; no
  ``--ref``: the branch the origin's ``HEAD`` points to, from prepare's ``ls-refs``), with
  ``refs/remotes/origin/<branch>`` at the commit and the branch tracking it. ``--ref`` a tag or
  a commit id: ``HEAD`` detached at the commit, as ``git clone --branch <tag>`` and ``git
  checkout <commit>`` leave it. No ``--ref`` and the origin not asked (offline): branch
  ``main``, tracking nothing (we do not know the origin's name for it);
- an ``index`` of every tracked entry with the stat data the mount shows (``git_index.py``);
- git's fsmonitor hook (``artifactfs-fsmonitor``, ``core.fsmonitor``, hook protocol 2) answered
  from the overlay's journal, and ``core.untrackedCache``: ``git status`` costs O(changes);
- a second promisor remote, ``artifactfs``, asked before ``origin``: blobs from the CAS, and
  those it lacks fetched from the origin into the CAS (``cas_remote.py``), so ``git commit``
  (which fetches every blob of the index it lacks first) works after a ``grep -r`` with the
  origin down, and nothing is fetched twice;
- ``artifactfs-base``: the commit (and branch) it was made for, and the depth made (when not
  1): an attach on the same commit with a larger ``--depth`` deepens it, nothing else changes.

Stat checking. The index holds exactly what ``getattr`` shows of an unchanged entry: inode,
nanosecond mtime, size, uid, gid, mode. So git's full stat check (``core.checkStat`` left at
``default``) passes for unchanged files and catches a changed one by any of those; we keep it
rather than ``minimal`` (mtime seconds and size only), which would call an edit that kept the
size and restored the mtime (``cp -p``, ``rsync -t``) clean. ``core.trustctime`` is false:
``LowerStat`` has no ctime, so the overlay's ctime (of a copy-up, of a ``chmod``) is no
promise we can hold git to, and a wrong one would only make git re-read (fetch) files; every
change that matters moves the mtime, size, inode or mode, and the journal names the path
anyway.

Restarts and refreshes. ``attach`` on a git directory made for the same commit leaves it
exactly as the user's commands left it (commits, index, branches, stash); only our hook script
is rewritten if it changed (a new interpreter or journal path). Made for another commit (the
workspace was discarded and the mount refreshed): the new commit's pack is installed, the
branch moved to it (a reflog line says so; the user's commits stay reachable from the
reflog), ``shallow`` gains it, the index is rewritten, then ``HEAD``, then ``artifactfs-base``
last, so a crash anywhere in between is redone by the next ``attach``. A new git directory is
built whole in a temporary directory beside it and renamed into place.

Everything here blocks (a mount runs it in a thread) and fails with ``SourceError``, one line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dulwich.errors import ApplyDeltaError, ChecksumMismatch, FileFormatException

from ...durable import fsync_directory
from ...errors import SourceError
from ...overlay.checkpoints import RESTORED_MARKER
from ...snapshot import Row, SnapshotIndex
from ..base import LowerStat, RootFile
from ..spec import strip_credentials
from . import git_dir
from .cache_tree import CachedTree
from .cas_remote import SETTINGS_FILE as CAS_REMOTE_SETTINGS
from .git_dir import Base, ConfigValues
from .git_index import fsmonitor_token, index_entries, write_git_index
from .git_objects import (
    MissingCommit,
    complete_commits,
    install_promisor_pack,
    pack_commits,
    shallow_boundary,
    write_loose_blob,
)
from .remote import GitRemote
from .untracked_cache import CachedDirectory, ExcludeFile, untracked_extension

if TYPE_CHECKING:
    from dulwich.config import ConfigFile

log = logging.getLogger(__name__)

GITFILE = b".git"
DEFAULT_BRANCH = "main"
"""The local branch when the origin's default branch name is not known (prepared offline)."""
_HEX_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_FAILURES = (
    OSError,
    sqlite3.Error,
    ValueError,
    zlib.error,
    struct.error,
    ChecksumMismatch,
    ApplyDeltaError,
    FileFormatException,
)
"""What making a git directory may fail with that is no bug of ours: the disk, the snapshot,
a damaged kept pack."""
_DAMAGED_PACK = (
    ChecksumMismatch,
    ApplyDeltaError,
    FileFormatException,
    struct.error,
    zlib.error,
    MissingCommit,
)


class GitWorktree:
    """The git directory of one git source's writable mount (``base.Worktree``)."""

    def __init__(self, remote: GitRemote) -> None:
        self.remote = remote
        self._git_dir: Path | None = None
        self._object_format = "sha1"
        self._work_tree: Path | None = None
        """Where the mount is: the untracked cache is made for that place (git_index.py)."""

    # -- attach ----------------------------------------------------------------------------

    def attach(
        self,
        snapshot: SnapshotIndex,
        directory: Path,
        stat_of: Callable[[Row], LowerStat],
        journal: Path,
        work_tree: Path | None = None,
    ) -> RootFile:
        directory = directory.absolute()
        self._work_tree = work_tree
        try:
            self._attach(snapshot, directory, stat_of, journal)
        except SourceError:
            raise
        except _FAILURES as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise SourceError(f"cannot make the git directory {directory}: {reason}") from exc
        return RootFile(GITFILE, b"gitdir: " + os.fsencode(directory) + b"\n")

    def _attach(
        self,
        snapshot: SnapshotIndex,
        directory: Path,
        stat_of: Callable[[Row], LowerStat],
        journal: Path,
    ) -> None:
        commit = snapshot.meta.commit
        self._object_format = snapshot.meta.object_format
        base = git_dir.read_base(directory) if directory.is_dir() else None
        if base is not None and (directory / RESTORED_MARKER).exists():
            self._own_config(directory)
        if base is not None and base.commit == commit:
            self._git_dir = directory
            self._write_scripts(directory, directory, journal, commit)
            if self._depth() > base.depth:
                self._deepen(directory, base)
            else:
                log.info("git directory %s kept as it was (commit %s)", directory, commit)
            return
        kept = self.remote.tip_pack(commit)
        if base is None:
            self._create(snapshot, directory, stat_of, journal, kept)
        else:
            self._repoint(snapshot, directory, stat_of, journal, kept, base)
        self._git_dir = directory

    def _own_config(self, directory: Path) -> None:
        """A git directory restored from a checkpoint (a shared bucket's word): its ``config``
        becomes the one ``_create`` writes, keeping only the user's identity and the tracking
        of branches (``origin``'s); its hooks and alternates go (restore brings none back:
        this is the second lock). Done before the mount shows ``.git``, so git never ran
        there with the bucket's config."""
        from dulwich.config import ConfigFile

        kept: list[bytes] = []
        try:
            old = ConfigFile.from_path(str(directory / "config"))
        except Exception:  # noqa: BLE001 - unreadable or malformed: nothing of it is kept
            old = None
        if old is not None:
            user = [(key, _text(old, (b"user",), key)) for key in ("name", "email")]
            if any(value for _, value in user):
                kept.append(git_dir.config_section("user", None, [(k, v) for k, v in user if v]))
            for section in old.sections():
                if len(section) != 2 or section[0] != b"branch":
                    continue
                branch = git_dir.valid_branch(section[1].decode("utf-8", "replace"))
                merge = _text(old, section, "merge")
                tracked = git_dir.valid_branch(merge.removeprefix("refs/heads/"))
                if branch is None or tracked is None or not merge.startswith("refs/heads/"):
                    continue
                kept.append(
                    git_dir.config_section(
                        "branch", branch, [("remote", "origin"), ("merge", merge)]
                    )
                )
        config = ConfigValues(
            url=strip_credentials(self.remote.spec.url),
            hook=directory / git_dir.HOOK_FILE,
            object_format=self._object_format,
            branch=None,
            cas_remote=git_dir.ext_url([str(directory / git_dir.CAS_REMOTE_FILE)]),
        )
        git_dir.write_atomic(directory / "config", git_dir.config_text(config) + b"".join(kept))
        shutil.rmtree(directory / "hooks", ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (directory / "objects" / "info" / "alternates").unlink()
        (directory / RESTORED_MARKER).unlink()
        log.info("git directory %s restored from a checkpoint: its config is ours now", directory)

    def _branch(self) -> tuple[str | None, bool]:
        """The local branch to make (None: detached), and whether the origin has it."""
        branch = git_dir.valid_branch(self.remote.head_branch)
        if branch is not None:
            return branch, True
        ref = self.remote.ref
        if ref is None or ref == "HEAD":
            return DEFAULT_BRANCH, False
        return None, False

    def _create(
        self,
        snapshot: SnapshotIndex,
        directory: Path,
        stat_of: Callable[[Row], LowerStat],
        journal: Path,
        kept: Path,
    ) -> None:
        """Build a new git directory beside ``directory`` and rename it into place."""
        parent = directory.parent
        parent.mkdir(parents=True, exist_ok=True)
        for stale in parent.glob(f".{directory.name}.tmp-*"):  # a crashed attach's
            shutil.rmtree(stale, ignore_errors=True)
        building = parent / f".{directory.name}.tmp-{secrets.token_hex(4)}"
        commit = snapshot.meta.commit
        branch, tracked = self._branch()
        try:
            for sub in ("objects/pack", "objects/info", "refs/heads", "refs/tags", "info"):
                (building / sub).mkdir(parents=True)
            self._install_pack(kept, building / "objects/pack", commit)
            config = ConfigValues(
                url=strip_credentials(self.remote.spec.url),
                hook=directory / git_dir.HOOK_FILE,
                object_format=self._object_format,
                branch=branch if tracked else None,
                cas_remote=git_dir.ext_url([str(directory / git_dir.CAS_REMOTE_FILE)]),
            )
            git_dir.write_atomic(building / "config", git_dir.config_text(config))
            self._write_scripts(building, directory, journal, commit)
            git_dir.write_atomic(building / "description", b"artifactfs workspace\n")
            depth, history = self._history(building, commit, self._depth())
            if history is None:
                git_dir.write_shallow(building, [commit])
            else:
                git_dir.write_shallow(building, shallow_boundary(history))
            message = f"clone: from {self.remote.display}"
            self._point(building, commit, branch, tracked, None, message)
            self._write_index(snapshot, building, stat_of, journal)
            self._write_head(building, commit, branch, None, message)
            git_dir.write_base(building, Base(commit, branch, depth))
            if directory.exists() or directory.is_symlink():
                _put_aside(directory)
            os.rename(building, directory)
            fsync_directory(parent)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        log.info("made git directory %s for %s (%s)", directory, commit, branch or "detached")

    def _repoint(
        self,
        snapshot: SnapshotIndex,
        directory: Path,
        stat_of: Callable[[Row], LowerStat],
        journal: Path,
        kept: Path,
        base: Base,
    ) -> None:
        """Move a git directory made for another commit to this snapshot's commit."""
        commit = snapshot.meta.commit
        branch, tracked = self._branch()
        if branch is None and base.branch is not None and self.remote.head_branch is None:
            branch = base.branch  # asked offline: keep the branch we made before
        self._install_pack(kept, directory / "objects/pack", commit)
        depth, history = self._history(directory, commit, self._depth())
        if history is None:
            git_dir.write_atomic(directory / "shallow", git_dir.shallow_lines(directory, commit))
        else:
            _merge_shallow(directory, history)
        self._write_scripts(directory, directory, journal, commit)
        message = f"artifactfs: refreshed from {base.commit[:12]} to {commit[:12]}"
        head = git_dir.read_ref(directory, "HEAD")
        self._point(directory, commit, branch, tracked, base, message)
        self._write_index(snapshot, directory, stat_of, journal)
        self._write_head(directory, commit, branch, head, message)
        git_dir.write_base(directory, Base(commit, branch, depth))
        log.info("moved git directory %s from %s to %s", directory, base.commit, commit)

    def _depth(self) -> int:
        return max(1, self.remote.settings.depth)

    def _deepen(self, directory: Path, base: Base) -> None:
        """A git directory made with less history than ``--depth`` now asks: fetch the rest
        (nothing else changes: the user's branches, index and stash stay)."""
        depth, history = self._history(directory, base.commit, self._depth())
        if history is None:
            return  # logged; the next attach tries again
        _merge_shallow(directory, history)
        git_dir.write_base(directory, Base(base.commit, base.branch, depth))
        log.info("git directory %s deepened to %d commits", directory, depth)

    def _history(
        self, root: Path, commit: str, depth: int
    ) -> tuple[int, dict[str, list[str]] | None]:
        """With ``depth`` > 1: fetch the commits and trees of ``commit``'s last ``depth``
        commits (one ``blob:none`` fetch) into ``root`` as another promisor pack; the depth
        made and the pack's commits with their parents (what ``shallow`` is computed from).
        History that cannot be fetched (offline, the origin down) is no failure: a warning
        is logged and the depth made is 1 (a later attach fetches it)."""
        if depth <= 1:
            return 1, None
        pack_dir = root / "objects/pack"
        temp = pack_dir / f"tmp_history_{secrets.token_hex(6)}"
        try:
            self.remote.history_pack(commit, depth, temp)
            install_promisor_pack(temp, pack_dir, self._object_format, commit)
            history = pack_commits(temp, self._object_format)
        except (SourceError, *_DAMAGED_PACK) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            log.warning(
                "the git directory of %s keeps depth 1: cannot fetch %d commits of history (%s)",
                commit,
                depth,
                reason,
            )
            return 1, None
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        return depth, history

    def _install_pack(self, kept: Path, pack_dir: Path, commit: str) -> None:
        """The kept pack as the git directory's promisor pack; a kept pack found damaged is
        removed and fetched again, once."""
        try:
            install_promisor_pack(kept, pack_dir, self._object_format, commit)
            return
        except _DAMAGED_PACK as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            log.warning("the pack kept for %s is damaged (%s): fetching it again", commit, reason)
        with contextlib.suppress(FileNotFoundError):
            kept.unlink()
        fetched = self.remote.tip_pack(commit)
        install_promisor_pack(fetched, pack_dir, self._object_format, commit)

    def _point(
        self,
        root: Path,
        commit: str,
        branch: str | None,
        tracked: bool,
        base: Base | None,
        message: str,
    ) -> None:
        """The branch (and the origin's tracking ref) at ``commit``."""
        if tracked and branch is not None:
            git_dir.write_ref(root, f"refs/remotes/origin/{branch}", commit)
            if self.remote.ref is None:
                git_dir.write_symref(
                    root, "refs/remotes/origin/HEAD", f"refs/remotes/origin/{branch}"
                )
        if branch is not None:
            name = f"refs/heads/{branch}"
            old = _resolved(root, name)
            git_dir.write_ref(root, name, commit)
            git_dir.log_ref(root, name, old, commit, message)

    def _write_head(
        self, root: Path, commit: str, branch: str | None, old_head: str | None, message: str
    ) -> None:
        if branch is not None:
            git_dir.write_symref(root, "HEAD", f"refs/heads/{branch}")
        else:
            git_dir.write_atomic(root / "HEAD", f"{commit}\n".encode())
        old = old_head if old_head is not None and _HEX_ID.fullmatch(old_head) else None
        if old is None and old_head is not None and old_head.startswith("ref: "):
            old = _resolved(root, old_head[5:].strip())
        git_dir.log_ref(root, "HEAD", old, commit, message)

    def _write_index(
        self,
        snapshot: SnapshotIndex,
        root: Path,
        stat_of: Callable[[Row], LowerStat],
        journal: Path,
    ) -> None:
        own = SnapshotIndex(snapshot.path)  # a connection of this thread's own
        directories = CachedDirectory(b"", None) if self._work_tree is not None else None
        trees = CachedTree(b"", None)  # the root's id, the commit's tree, is not in a snapshot
        try:
            entries = index_entries(own, stat_of, directories, trees)
        finally:
            own.close()
        untracked = None
        if directories is not None and self._work_tree is not None:
            hash_name = "sha256" if self._object_format == "sha256" else "sha1"
            exclude = ExcludeFile.of(root / "info" / "exclude", hash_name)
            untracked = untracked_extension(directories, self._work_tree, exclude, hash_name)
        lock = root / "index.lock"
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()  # nobody runs git in a workspace that is not mounted yet
        write_git_index(
            root / "index",
            lock,
            entries,
            self._object_format,
            fsmonitor_token(journal),
            untracked,
            trees,
        )

    def _write_scripts(self, root: Path, final: Path, journal: Path, commit: str) -> None:
        """Our programs in the git directory, and what they are run with: the fsmonitor hook,
        the CAS promisor remote and its settings (rewritten only when they changed: a new
        interpreter, journal, home or commit). ``final`` is where ``root`` will be."""
        settings = self.remote.settings
        values = {
            "commit": commit,
            "origin": strip_credentials(self.remote.spec.url),
            "object_format": self._object_format,
            "cas": str(settings.cas_dir.absolute()),
            "snapshots": str(settings.snapshots_dir.absolute()),
            "temp": str(settings.temp_dir.absolute()),
            "io_timeout": settings.io_timeout,
        }
        wanted = {
            git_dir.HOOK_FILE: (git_dir.hook_script(journal), 0o755),
            git_dir.CAS_REMOTE_FILE: (
                git_dir.cas_remote_script(final / CAS_REMOTE_SETTINGS),
                0o755,
            ),
            CAS_REMOTE_SETTINGS: ((json.dumps(values) + "\n").encode(), 0o644),
        }
        for name, (data, mode) in wanted.items():
            try:
                if (root / name).read_bytes() == data:
                    continue
            except OSError:
                pass
            git_dir.write_atomic(root / name, data, mode=mode)

    # -- blobs -----------------------------------------------------------------------------

    def keep_blob(self, row: Row, content: Path) -> None:
        """Store a copied-up file's verified bytes as a loose object, so that ``git diff``
        of the edited file needs no origin. Never raises: a failure is logged."""
        directory = self._git_dir
        if directory is None or row.oid is None or not row.kind.has_blob or row.sha256:
            return
        try:
            write_loose_blob(directory / "objects", row.oid, self._object_format, content)
        except Exception as exc:  # noqa: BLE001 - best effort: git fetches it itself if it must
            log.warning("could not keep blob %s in the git directory: %s", row.oid, exc)


def _put_aside(directory: Path) -> None:
    """Move away what is at ``directory`` (it has no base we recorded): a git directory, which
    may hold somebody's commits, is kept beside it and named in the log; anything else (an
    empty directory) is removed."""
    aside = directory.with_name(f".{directory.name}.old-{int(time.time())}-{secrets.token_hex(2)}")
    os.rename(directory, aside)
    if (aside / "HEAD").exists():
        log.warning("%s had no record of its commit: moved it to %s", directory, aside)
    else:
        shutil.rmtree(aside, ignore_errors=True)


def _merge_shallow(root: Path, history: dict[str, list[str]]) -> None:
    """``shallow`` after a history pack was installed: the commits it listed whose parents
    the pack now holds are no boundary any more; the pack's own boundary is added."""
    complete = complete_commits(history)
    known = [c for c in git_dir.read_shallow(root) if c not in complete]
    git_dir.write_shallow(root, known + [c for c in shallow_boundary(history) if c not in known])


def _resolved(root: Path, name: str) -> str | None:
    """The commit a loose ref names (None if absent or packed)."""
    value = git_dir.read_ref(root, name)
    return value if value is not None and _HEX_ID.fullmatch(value) else None


def _text(config: ConfigFile, section: tuple[bytes, ...], key: str) -> str:
    """A value of ``config`` as text ("" if absent, or not a one-line value)."""
    try:
        value = config.get(section, key.encode())
    except KeyError:
        return ""
    text = value.decode("utf-8", "replace")
    return "" if "\n" in text or "\0" in text else text
