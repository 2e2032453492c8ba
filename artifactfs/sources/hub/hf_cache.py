"""The user's huggingface_hub cache: read for blobs a mount would otherwise fetch, and written
on request (``artifactfs export-hf-cache``) so that huggingface_hub finds a snapshot's files
without a download.

huggingface_hub's layout, per repository (``models--org--name``, ``datasets--…``)::

    blobs/<etag>                      the file's bytes
    snapshots/<commit>/<path>         a relative symbolic link to ../../blobs/<etag>
    refs/<revision>                   the commit a branch or tag last resolved to

The etag of an LFS file is its sha256 and that of any other file its git blob id: exactly the
hex of the CAS key ``SnapshotIndex.digest_of`` gives the same file. So a blob is found by name.

**Taking** (``HubCache.take``, blocking): a blob the mount would fetch is looked for in the
repository's own folder first, then in every other repository's (a tokenizer or a base model is
often shared). It is copied into a temporary beside its place in the CAS — by reflink where
the file systems share blocks, else ``copy_file_range``, else read and write
(``overlay.copyup.clone_or_copy``) — synced, and only then hashed (the copy, not the user's
file, so nothing can change between the check and what is kept) and published
(``ContentStore.adopt``). Never a hard link: it would share the inode, so the CAS could not be
made read-only without changing the user's file's mode, and a later write into the user's file
would silently change a blob we verified. The user's files are only ever opened for reading (a
FIFO or a device is never waited on); a copy that does not match is refused (one warning per
file), and the blob is fetched from the Hub as usual.

**Exporting** (``export``, blocking): every file of a snapshot, from the CAS, into the layout:
blobs written to a temporary (``<etag>.<random>.incomplete``, huggingface_hub's own kind of
name for a download in progress), synced, hashed, then renamed into place; then the
snapshot's links, each made beside its place and renamed over it; the ref last. A crash leaves
at most a temporary huggingface_hub never trusts. Never a link into the CAS: eviction may
remove what it names.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from ...cas import ContentStore, Digest, DigestMismatch
from ...cas import reads as cas_reads
from ...cas.digests import digest_of
from ...cas.eviction import remove_unused
from ...durable import fsync_directory
from ...overlay.copyup import clone_or_copy
from ...snapshot import ROOT_INODE, Kind, Row, SnapshotIndex
from ..base import CacheExport, CacheExportReport
from .spec import HubSourceSpec

log = logging.getLogger(__name__)

CACHE_ENV = "ARTIFACTFS_HF_CACHE"
"""The setting ``hf.cache`` (settings.py checks it): ``off`` (or ``0``, ``no``, ``false``):
never look in a huggingface_hub cache; a directory: look there; unset, empty or ``auto``: where
huggingface_hub itself looks (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``)."""
_OFF = frozenset({"off", "0", "no", "false", "none"})
_REPO_FOLDER = re.compile(r"(?:models|datasets|spaces)--.+")
_COMMIT = re.compile(r"[0-9a-f]{40}")
CHUNK = 1 << 20
FOLDERS_SECONDS = 5.0


def folder_name(spec: HubSourceSpec) -> str:
    """The repository's folder in a huggingface_hub cache (``models--org--name``)."""
    from huggingface_hub.file_download import repo_folder_name

    return repo_folder_name(repo_id=spec.repo_id, repo_type=spec.repo_type)


def default_cache() -> Path:
    """Where huggingface_hub keeps its cache in this environment."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


class HubCache:
    """A huggingface_hub cache that a mount takes blobs from. Blocking: call from a thread."""

    def __init__(self, spec: HubSourceSpec, root: Path | None = None) -> None:
        self._spec = spec
        self._root = root
        self._folder: str | None = None
        self._folders: tuple[float, list[str]] | None = None
        self._refused: set[tuple[int, int, int, int]] = set()
        """(device, inode, size, mtime) of files found damaged: not hashed, nor logged, again."""

    @classmethod
    def from_environment(cls, spec: HubSourceSpec) -> HubCache | None:
        """The cache ``ARTIFACTFS_HF_CACHE`` says to use (see ``CACHE_ENV``), or None (off)."""
        value = os.environ.get(CACHE_ENV, "").strip()
        if value.lower() in _OFF:
            return None
        auto = not value or value.lower() == "auto"
        return cls(spec, None if auto else Path(value).expanduser())

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = default_cache()  # asked when first needed: huggingface_hub's import
        return self._root

    def _candidates(self, digest: Digest) -> Iterator[Path]:
        """Where a blob named ``digest`` may be: this repository's folder first, then the
        others'."""
        if self._folder is None:
            self._folder = folder_name(self._spec)
        yield self.root / self._folder / "blobs" / digest.hex
        for folder in self._other_folders():
            yield self.root / folder / "blobs" / digest.hex

    def _other_folders(self) -> list[str]:
        """The other repositories' folders, listed at most every ``FOLDERS_SECONDS`` (a
        repository of thousands of small files would otherwise list the cache per file)."""
        now = time.monotonic()
        if self._folders is None or now - self._folders[0] > FOLDERS_SECONDS:
            try:
                names = sorted(entry.name for entry in os.scandir(self.root))
            except OSError:
                names = []
            found = [n for n in names if n != self._folder and _REPO_FOLDER.fullmatch(n)]
            self._folders = (now, found)
        return self._folders[1]

    def take(self, cas: ContentStore, digest: Digest, size: int) -> bool:
        """Publish ``digest`` into ``cas`` from this cache, if a copy of the right content is
        there; False if not (then fetch it). Never raises for what it finds there."""
        for path in self._candidates(digest):
            try:
                how = self._take_one(cas, digest, size, path)
            except OSError as exc:  # our side (a full store, say): fetching will tell
                log.warning(
                    "could not take %s from the huggingface_hub cache (%s): %s; fetching it",
                    digest, path, exc,
                )  # fmt: skip
                return False
            if how is not None:
                log.info(
                    "took %s (%d bytes) from the huggingface_hub cache by %s: %s",
                    digest, size, how, path,
                )  # fmt: skip
                with contextlib.suppress(OSError):  # a partial download of it is now useless
                    remove_unused(cas.root, digest, partial=True)
                return True
        return False

    def _take_one(self, cas: ContentStore, digest: Digest, size: int, path: Path) -> str | None:
        try:  # never blocks on a FIFO; follows huggingface_hub's own links (shared Xet blobs)
            source = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                log.info("cannot read %s: %s", path, exc)
            return None
        try:
            info = os.fstat(source)
            if not stat.S_ISREG(info.st_mode):
                return None
            key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
            if key in self._refused:
                return None
            if info.st_size != size:
                self._refuse(key, digest, path, f"{info.st_size} bytes, expected {size}")
                return None
            temp = cas.staging_path(digest)
            try:
                target = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    how = clone_or_copy(source, target, size)
                    os.fsync(target)
                finally:
                    os.close(target)
                cas.adopt(digest, temp)  # hashes our copy; removes it on a mismatch
            except DigestMismatch as exc:
                self._refuse(key, digest, path, f"its content hashes to {exc.actual_hex}")
                return None
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)  # adopted: gone already
            return how
        finally:
            os.close(source)

    def _refuse(self, key: tuple[int, int, int, int], digest: Digest, path: Path, why: str) -> None:
        self._refused.add(key)
        log.warning(
            "the huggingface_hub cache's copy of %s is damaged (%s): not used (left as it is: %s);"
            " fetching it from the Hub",
            digest, why, path,
        )  # fmt: skip


# -- export ---------------------------------------------------------------------------------


def export(spec: HubSourceSpec, request: CacheExport) -> CacheExportReport:
    """Write the files of ``request.snapshot`` into a huggingface_hub cache (see the module
    docstring). Files whose blob is not in the CAS are reported, not fetched: the caller
    fetches first. Blocking."""
    root = request.target if request.target is not None else default_cache()
    folder = root / folder_name(spec)
    index = SnapshotIndex(request.snapshot)
    try:
        commit = index.meta.commit
        report = CacheExportReport(folder, commit)
        cas = ContentStore(request.cas_dir)
        snapshot_dir = folder / "snapshots" / commit
        (folder / "blobs").mkdir(parents=True, exist_ok=True)  # cannot write there: say so once
        snapshot_dir.mkdir(parents=True, exist_ok=True)
        for path, row in _files(index):
            digest = index.digest_of(row)
            try:
                _export_file(cas, folder, snapshot_dir, path, digest, row.size or 0, report)
            except OSError as exc:
                report.failed.append(f"{path}: {exc.strerror or exc}")
        revision = spec.revision or "main"
        if not report.failed and not report.missing and not _COMMIT.fullmatch(revision):
            # a ref the user's cache has already may name a newer commit: never moved back
            report.ref_kept = _write_ref(folder / "refs" / revision, commit)
            report.ref = None if report.ref_kept else revision
    finally:
        index.close()
    return report


def _files(index: SnapshotIndex) -> Iterator[tuple[str, Row]]:
    """(path, row) of every file of the snapshot, breadth first."""
    root = index.get(ROOT_INODE)
    directories = [(root, "")] if root is not None else []
    while directories:
        directory, prefix = directories.pop(0)
        after = 0
        while children := index.children(directory, after):
            for child in children:
                name = child.name.decode("utf-8", "surrogateescape")
                if name in ("", ".", "..") or "/" in name:
                    continue  # never made by a Hub prepare; never followed either
                path = f"{prefix}{name}"
                if child.kind is Kind.DIRECTORY:
                    directories.append((child, f"{path}/"))
                elif child.kind.has_blob:
                    yield path, child
            after = children[-1].inode


def _export_file(
    cas: ContentStore,
    folder: Path,
    snapshot_dir: Path,
    path: str,
    digest: Digest,
    size: int,
    report: CacheExportReport,
) -> None:
    blob = folder / "blobs" / digest.hex
    report.files += 1
    report.bytes += size
    try:
        there = blob.stat().st_size == size
    except FileNotFoundError:
        there = False
    if there:
        report.present += 1
    else:
        how = _write_blob(cas, blob, digest, size)
        if how is None:
            report.missing.append(path)
            return
        report.written += 1
        if how != "empty":
            report.how[how] = report.how.get(how, 0) + 1
    link = snapshot_dir / path
    link.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(blob, link.parent)
    with contextlib.suppress(OSError):
        if os.readlink(link) == target:
            return
    temp = link.with_name(f".{link.name}.{secrets.token_hex(4)}.tmp")
    os.symlink(target, temp)
    try:
        os.rename(temp, link)
    except OSError:
        os.unlink(temp)
        raise


def _write_blob(cas: ContentStore, blob: Path, digest: Digest, size: int) -> str | None:
    """Write ``digest``'s content from the CAS to ``blob`` (temporary, synced, verified,
    renamed); return how it was copied, or None if the CAS does not hold it."""
    blob.parent.mkdir(parents=True, exist_ok=True)
    temp = blob.with_name(f"{blob.name}.{secrets.token_hex(4)}.incomplete")
    if size == 0:
        if digest_of(digest.algorithm, b"") != digest:
            return None
        source, how = -1, "empty"
    else:
        path = cas.path_of(digest)
        try:
            source = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        if not cas_reads.hold(source, path):  # being evicted this instant: fetch it again
            os.close(source)
            return None
        how = ""
    try:
        target = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            if source >= 0:
                how = clone_or_copy(source, target, size)
            os.fsync(target)
            if _hash_of(target, digest, size) != digest.hex:
                raise OSError(
                    errno.EIO,
                    f"the store's copy of {digest} is damaged (artifactfs verify --all finds and"
                    " quarantines it)",
                )
        finally:
            os.close(target)
        os.rename(temp, blob)
        fsync_directory(blob.parent)
    finally:
        if source >= 0:
            os.close(source)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return how


def _hash_of(fd: int, digest: Digest, size: int) -> str:
    hasher = digest.algorithm.new_hasher(size)
    offset = 0
    while chunk := os.pread(fd, CHUNK, offset):
        hasher.update(chunk)
        offset += len(chunk)
    return hasher.hexdigest()


def _write_ref(path: Path, commit: str) -> str | None:
    """Record that the ref at ``path`` names ``commit``, unless it exists already: then the
    commit it names (left as it is; None when it was ``commit`` or is new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        existing = path.read_text().strip()
        return None if existing == commit else existing
    temp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temp, "w") as out:
            out.write(commit)
            out.flush()
            os.fsync(out.fileno())
        os.rename(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    fsync_directory(path.parent)
    return None
