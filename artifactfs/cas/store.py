"""The local content-addressed store: verified, immutable blobs on disk.

Contract (tested by ``tests/test_2_cas_contract.py``):

- a blob appears under its published name only after its content was hashed and matched the
  digest; it is written to a temporary file in the same directory, fsynced, made read-only
  and renamed into place, so a reader never sees a partial blob under a published name;
- ``put`` of a blob that is already there leaves the same bytes under the name (idempotent),
  and heals a damaged one;
- digests are validated before any path is built (see ``digests.Digest``);
- several processes may fill the store at once: temporary names are unique per writer and
  ``rename`` is atomic, so the last writer of the same content wins harmlessly.

Layout: ``<root>/<algorithm>/<first 2 hex>/<hex>``; temporaries are ``.tmp-*`` beside them.

A published blob is trusted only as far as it was checked: a blob found damaged later (its
size or digest differs: a disk error, a hand edit, a bug) is *quarantined* — moved to
``<root>/quarantine/<algorithm>/<hex>.<time>.<random>`` for inspection, never served again —
and fetched afresh. ``put`` and the ``Publisher`` replace whatever is under a published name,
so a re-fetch always heals.

Many small blobs at once (a pack of a walker's files) go through a ``Publisher``: the same
contract, but durability is paid per group of blobs rather than per blob. Two ``fsync`` calls
per blob made a 5,000-blob fetch on ext4 take 10 s; a group is written to temporaries, the file
system is synced once (``syncfs``) and each temporary ``fdatasync``ed (clean by then, so
cheap: it reports a write error of that very file), the temporaries are renamed into place,
and the file system is synced again so that the names last too. A crash at any point leaves
whole blobs or no blobs. (A group of one blob is synced alone, as ``put`` does: a lone
reader's blob should not wait for whatever else the file system has to write.)
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import time
from collections.abc import Container, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..durable import fsync_directory, syncfs
from .digests import Algorithm, Digest, digest_of

if TYPE_CHECKING:
    from .usage import UsageRecorder

_TEMP_PREFIX = ".tmp-"
QUARANTINE = "quarantine"
VERIFY_ON_OPEN = 1 << 20
"""Published blobs up to this size are hashed before a worker first serves them, so a byte
flipped on disk is never served: a walker's files are this small, and hashing one of a few KiB
costs microseconds. Larger ones are checked by size on every open, and whole by ``artifactfs
verify`` (cas/scrub.py)."""
_temp_serials = itertools.count()


class DigestMismatch(Exception):
    """Content did not hash to the digest it was offered under; nothing was published."""

    def __init__(self, expected: Digest, actual_hex: str) -> None:
        super().__init__(f"content of {expected} hashes to {actual_hex}")
        self.expected = expected
        self.actual_hex = actual_hex


class SizeMismatch(Exception):
    """A stream ended before or after the size it was announced with; nothing was published."""

    def __init__(self, digest: Digest, expected: int, actual: int) -> None:
        super().__init__(f"{digest}: expected {expected} bytes, got {actual}")
        self.expected = expected
        self.actual = actual


class ContentStore:
    """Blocking API: call it from a worker thread, never from the trio loop.

    With ``usage`` (a mount's ``UsageRecorder``, cas/usage.py), what is published and opened
    is recorded for the size cap: ``put``, ``adopt`` and the ``Publisher`` record what they
    publish; readers call ``touched`` when they open a blob."""

    def __init__(self, root: Path, usage: UsageRecorder | None = None) -> None:
        self.root = root
        self.usage = usage

    def touched(self, digest: Digest) -> None:
        """A reader opened (or closed) this blob: it was used now (for the LRU order). Cheap,
        and safe on the trio loop."""
        if self.usage is not None:
            self.usage.touched(digest)

    def _published(self, digest: Digest, size: int | None) -> None:
        if self.usage is not None:
            self.usage.published(digest, size)

    def path_of(self, digest: Digest) -> Path:
        return self.root / digest.algorithm.name / digest.hex[:2] / digest.hex

    def contains(self, digest: Digest) -> bool:
        return self.path_of(digest).is_file()

    def size_of(self, digest: Digest) -> int | None:
        """Bytes of a published blob, or None when it is not in the store."""
        try:
            return self.path_of(digest).stat().st_size
        except FileNotFoundError:
            return None

    def open_fd(self, digest: Digest) -> int:
        """A read-only descriptor of a published blob; raises FileNotFoundError if absent."""
        return os.open(self.path_of(digest), os.O_RDONLY | os.O_CLOEXEC)

    def put(self, digest: Digest, chunks: Iterable[bytes], size: int | None = None) -> Path:
        """Verify ``chunks`` against ``digest`` and publish them; return the published path.

        ``size`` is required for git blob ids (their hash starts with the size). Raises
        ``DigestMismatch`` or ``SizeMismatch`` and leaves nothing behind when the content is
        not what the digest says. A blob already published under the name is replaced (the
        same bytes, atomically; or, if it was damaged, healed).
        """
        final = self.path_of(digest)
        hasher = digest.algorithm.new_hasher(size)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = final.parent / f"{_TEMP_PREFIX}{digest.hex}-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        published = False
        try:
            written = 0
            with os.fdopen(fd, "wb", closefd=True) as out:
                for chunk in chunks:
                    hasher.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                if size is not None and written != size:
                    raise SizeMismatch(digest, size, written)
                actual = hasher.hexdigest()
                if actual != digest.hex:
                    raise DigestMismatch(digest, actual)
                os.fchmod(out.fileno(), 0o444)
                os.fsync(out.fileno())
            os.rename(temp, final)
            published = True
            fsync_directory(final.parent)
            self._published(digest, written)
            return final
        finally:
            if not published:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)

    def put_bytes(self, digest: Digest, data: bytes) -> Path:
        return self.put(digest, (data,), len(data))

    def add_bytes(self, algorithm: Algorithm, data: bytes) -> Digest:
        """Publish in-memory content under the digest computed from it."""
        digest = digest_of(algorithm, data)
        self.put_bytes(digest, data)
        return digest

    def add_bytes_if(
        self, algorithm: Algorithm, data: bytes, accept: Container[str]
    ) -> Digest | None:
        """Like ``add_bytes``, but only for content whose digest is in ``accept`` (one hash)."""
        digest = digest_of(algorithm, data)
        if digest.hex not in accept:
            return None
        self.put_bytes(digest, data)
        return digest

    def publisher(self, group_blobs: int = 64, group_bytes: int = 8 << 20) -> Publisher:
        """A ``Publisher`` into this store; use it as a context manager."""
        return Publisher(self, group_blobs, group_bytes)

    def staging_path(self, digest: Digest) -> Path:
        """A new, unique temporary name beside where ``digest`` is published (its directory
        made), for content to be written there and then ``adopt``ed. Left behind by a crash,
        it is swept like any temporary."""
        final = self.path_of(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.parent / f"{_TEMP_PREFIX}{digest.hex}-{os.getpid()}-{secrets.token_hex(4)}"

    def adopt(self, digest: Digest, path: Path) -> Path:
        """Move a complete file into the store if it hashes to ``digest``.

        The file must be on the same file system (partials are, under the same root). On a
        mismatch it is deleted and ``DigestMismatch`` raised: its bytes are never published.
        """
        final = self.path_of(digest)
        size = path.stat().st_size
        hasher = digest.algorithm.new_hasher(size)
        with open(path, "rb") as source:
            while chunk := source.read(1 << 20):
                hasher.update(chunk)
        actual = hasher.hexdigest()
        if actual != digest.hex:
            path.unlink()
            raise DigestMismatch(digest, actual)
        os.chmod(path, 0o444)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, final)
        fsync_directory(final.parent)
        if self.usage is not None:
            self.usage.partial_gone(digest)
        self._published(digest, size)
        return final

    # -- damage ---------------------------------------------------------------------------------

    def hash_published(self, digest: Digest) -> str | None:
        """The digest (hex) the published file of ``digest`` really has, or None if there is
        none. Blocking: reads the whole file."""
        try:
            with open(self.path_of(digest), "rb") as blob:
                size = os.fstat(blob.fileno()).st_size
                hasher = digest.algorithm.new_hasher(size)
                while chunk := blob.read(1 << 20):
                    hasher.update(chunk)
        except FileNotFoundError:
            return None
        return hasher.hexdigest()

    def quarantine(self, digest: Digest) -> Path | None:
        """Move the published file of ``digest`` aside: it failed its check. Returns where it
        went (None if it was gone already). Never deletes: a person may want to look."""
        directory = self.root / QUARANTINE / digest.algorithm.name
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{digest.hex}.{int(time.time())}.{secrets.token_hex(3)}"
        try:
            os.rename(self.path_of(digest), target)
        except FileNotFoundError:
            return None
        return target

    def quarantined(self) -> int:
        """How many damaged blobs are kept aside."""
        return sum(1 for _ in (self.root / QUARANTINE).glob("*/*"))

    def sweep_temporaries(self, older_than_seconds: float = 3600.0) -> int:
        """Remove temporaries left by writers that crashed; return how many were removed."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for temp in self.root.glob(f"*/*/{_TEMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                if temp.stat().st_mtime < cutoff:
                    temp.unlink()
                    removed += 1
        return removed


class Publisher:
    """Publishes in-memory blobs in groups (see the module docstring). Blocking; one thread at
    a time. Call ``publish`` for the last group before leaving the ``with`` block: whatever is
    still pending when it is left (by an exception, say) is removed, and only the groups
    already published stay."""

    def __init__(self, store: ContentStore, group_blobs: int, group_bytes: int) -> None:
        self._store = store
        self._group_blobs = group_blobs
        self._group_bytes = group_bytes
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._directories: set[Path] = set()
        self._names = f"{os.getpid()}-{secrets.token_hex(4)}"
        """Unique to this publisher: a killed writer's leftovers never collide with ours."""

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exception: object) -> None:
        _discard(self._pending)
        self._pending = []

    def add_if(self, algorithm: Algorithm, data: bytes, accept: Container[str]) -> list[Digest]:
        """Queue content whose digest (computed here, so it is verified by construction) is in
        ``accept``; return what this call published (a whole group, or nothing yet)."""
        digest = digest_of(algorithm, data)
        if digest.hex not in accept:
            return []
        final = self._store.path_of(digest)  # if it is there already, renaming over it is
        directory = final.parent  # harmless: the same bytes, replaced atomically
        if directory not in self._directories:
            directory.mkdir(parents=True, exist_ok=True)
            self._directories.add(directory)
        temp = directory / f"{_TEMP_PREFIX}{digest.hex}-{self._names}-{next(_temp_serials)}"
        # created read-only: the descriptor opened here may still write it; kept open until
        # the group is synced, to learn of a write error on this very file
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        self._pending.append(_Pending(temp, final, digest, fd, len(data)))
        with memoryview(data) as view:
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
        self._pending_bytes += len(data)
        if len(self._pending) >= self._group_blobs or self._pending_bytes >= self._group_bytes:
            return self.publish()
        return []

    def publish(self) -> list[Digest]:
        """Make the pending blobs durable and visible; return their digests."""
        if not self._pending:
            return []
        group, self._pending, self._pending_bytes = self._pending, [], 0
        alone = len(group) == 1  # then syncing the whole file system would wait for more
        try:
            if not alone:
                self._sync()  # writes every group member's data back at once
            for blob in group:
                # After the syncfs this finds the data clean and returns at once, but it reports
                # a write-back error of this file to us (syncfs reports one only once per file
                # system, perhaps to another process), and it is all there is where syncfs
                # does nothing (some FUSE file systems).
                os.fdatasync(blob.fd)
                os.close(blob.fd)
                blob.fd = -1
            for blob in group:
                os.rename(blob.temp, blob.final)
        except BaseException:
            _discard(group)
            raise
        if alone:  # the new names, too
            fsync_directory(group[0].final.parent)
        else:
            self._sync()
        for blob in group:
            self._store._published(blob.digest, blob.size)
        return [blob.digest for blob in group]

    def _sync(self) -> None:
        syncfs(self._store.root)


@dataclass
class _Pending:
    temp: Path
    final: Path
    digest: Digest
    fd: int
    """Open until the blob's data is known to be on disk, then -1."""
    size: int


def _discard(blobs: list[_Pending]) -> None:
    """Remove temporaries that will not be published (a renamed one is gone already)."""
    for blob in blobs:
        if blob.fd >= 0:
            os.close(blob.fd)
            blob.fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(blob.temp)
