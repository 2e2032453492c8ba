"""The shared tier's objects: one small blocking interface, over S3 or a shared directory.

Everything above this module (read-through, write-behind, snapshots, checkpoints) speaks only
``ObjectStore``; it is called from worker threads, never from the trio loop, and every call is
bounded by the tier's timeout (``TierLocation.timeout``).

- ``put_new`` is a create-only put (S3 ``If-None-Match: *``; ``link(2)`` on a shared
  directory): racing nodes that upload the same digest never clobber each other, and the
  loser learns that the object is there.
- ``put_if`` replaces an object only if it still has the ETag the caller last saw (S3
  ``If-Match``; a lock and a compare on a shared directory), or creates it only if it is
  absent: the compare-and-swap checkpoints move their pointers with.

The S3 client is obstore (``object_store``, in Rust): it releases the GIL while it waits, does
ranges, conditional puts and multipart, reads the standard ``AWS_*`` variables itself, and
imports in 10 ms (boto3 takes 300: a worker that starts in milliseconds cannot pay that).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ..durable import fsync_directory
from .location import TierLocation

DOWNLOAD_CHUNK = 4 << 20
TRANSFER_SECONDS = 3600.0
"""The longest one request may take while bytes keep moving: a whole large blob, either way.
``tier.timeout`` bounds connecting and every silence (the S3 client's read timeout)."""


class TierError(Exception):
    """The tier could not be reached, refused, or timed out. The message names the tier but
    never a credential."""


class PreconditionFailed(TierError):
    """``put_if`` lost: the object changed (or appeared, or went) since the ETag was read."""


class TooLarge(Exception):
    """An object longer than its reader's bound: not what was asked for (never a tier
    failure: the tier answered, with the wrong thing)."""


class BoundedWriter:
    """A file that refuses to grow past ``limit`` bytes: a download's bound, so an object in
    the tier can never fill the disk with more than the reader expects."""

    def __init__(self, out: BinaryIO, limit: int) -> None:
        self._out = out
        self._left = limit
        self._limit = limit

    def write(self, data: bytes) -> int:
        self._left -= len(data)
        if self._left < 0:
            raise TooLarge(f"more than the {self._limit:,} bytes expected")
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str


class ObjectStore(Protocol):
    description: str
    """Where the objects are, fit for a message (no credentials)."""

    def head(self, key: str) -> ObjectInfo | None: ...

    def get(self, key: str) -> tuple[bytes, str] | None:
        """The whole object and its ETag, or None if there is none."""
        ...

    def get_range(self, key: str, start: int, length: int) -> bytes: ...

    def download(
        self, key: str, out: BinaryIO, progress: Callable[[int], None] | None = None
    ) -> int | None:
        """Stream the object into ``out``; its size, or None if there is none."""
        ...

    def put_new(self, key: str, source: Path | bytes) -> bool:
        """Create ``key`` unless it exists: True if this call created it."""
        ...

    def put_if(self, key: str, data: bytes, etag: str | None) -> str:
        """Write ``key`` only if its ETag is still ``etag`` (None: only if it is absent).
        Returns the new ETag; raises ``PreconditionFailed`` otherwise."""
        ...


def open_store(location: TierLocation) -> ObjectStore:
    if location.scheme == "file":
        return DirectoryObjects(Path(location.path))
    return S3Objects(location)


# -- S3 ---------------------------------------------------------------------------------------


class S3Objects:
    """An S3 bucket and prefix, through obstore. Credentials come from the environment or the
    shared credentials file (``TierLocation.credentials``), and are never shown."""

    def __init__(self, location: TierLocation) -> None:
        import obstore.store

        self._obstore = __import__("obstore")
        self.description = location.display
        seconds = timedelta(seconds=location.timeout)
        client: Any = {  # a silence is bounded, not a long transfer (a 5 GiB upload)
            "connect_timeout": seconds,
            "read_timeout": seconds,
            "timeout": timedelta(seconds=TRANSFER_SECONDS),
        }
        config: Any = {"region": location.region}
        if location.endpoint:
            config["endpoint"] = location.endpoint
            client["allow_http"] = location.endpoint.startswith("http://")
        config.update(location.credentials())
        self._store = obstore.store.S3Store(
            location.bucket,
            prefix=location.path or None,
            config=config,
            client_options=client,
            retry_config={"max_retries": 2, "retry_timeout": seconds},
        )

    def _call(self, what: str, key: str, call: Callable[[], Any]) -> Any:
        exceptions = self._obstore.exceptions
        try:
            return call()
        except (FileNotFoundError, TooLarge):
            raise
        except exceptions.PreconditionError:
            raise PreconditionFailed(f"{self.description}: {key} changed meanwhile") from None
        except exceptions.AlreadyExistsError:
            raise PreconditionFailed(f"{self.description}: {key} exists already") from None
        except Exception as exc:  # noqa: BLE001 - obstore's errors have no common base to name
            raise TierError(f"{self.description}: {what} {key} failed: {_short(exc)}") from None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            meta = self._call("head", key, lambda: self._obstore.head(self._store, key))
        except FileNotFoundError:
            return None
        return ObjectInfo(int(meta["size"]), str(meta["e_tag"]))

    def get(self, key: str) -> tuple[bytes, str] | None:
        def whole() -> tuple[bytes, str]:
            result = self._obstore.get(self._store, key)
            return bytes(result.bytes()), str(result.meta["e_tag"])

        try:
            data: tuple[bytes, str] = self._call("get", key, whole)
        except FileNotFoundError:
            return None
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        def ranged() -> bytes:
            return bytes(self._obstore.get_range(self._store, key, start=start, length=length))

        try:
            data: bytes = self._call("range of", key, ranged)
        except FileNotFoundError:
            raise TierError(f"{self.description}: {key} is gone") from None
        return data

    def download(
        self, key: str, out: BinaryIO, progress: Callable[[int], None] | None = None
    ) -> int | None:
        def stream() -> int:
            result = self._obstore.get(self._store, key)
            total = 0
            for chunk in result.stream(min_chunk_size=DOWNLOAD_CHUNK):
                out.write(chunk)
                total += len(chunk)
                if progress is not None:
                    progress(len(chunk))
            return total

        try:
            size: int = self._call("get", key, stream)
        except FileNotFoundError:
            return None
        return size

    def put_new(self, key: str, source: Path | bytes) -> bool:
        def put() -> None:
            if isinstance(source, bytes):
                self._obstore.put(self._store, key, source, mode="create")
            else:  # one PUT up to S3's 5 GiB limit: a multipart upload is not conditional
                with open(source, "rb") as data:
                    self._obstore.put(self._store, key, data, mode="create", use_multipart=False)

        try:
            self._call("upload of", key, put)
        except PreconditionFailed:
            return False
        return True

    def put_if(self, key: str, data: bytes, etag: str | None) -> str:
        mode: Any = "create" if etag is None else {"e_tag": etag}
        result = self._call(
            "update of", key, lambda: self._obstore.put(self._store, key, data, mode=mode)
        )
        return str(result["e_tag"])


def _short(exc: Exception) -> str:
    """obstore's messages carry the whole request; the first line says what went wrong."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


# -- a shared directory -----------------------------------------------------------------------


class DirectoryObjects:
    """Objects as files under a directory every node mounts (NFS, a shared volume). A new
    object is written to a temporary and linked into place (``link`` fails if the name exists:
    create-only); a pointer is replaced under a lock after comparing its ETag, which is made
    from the file's identity (inode, size, change time): a rename always changes it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"file://{root}"

    def _path(self, key: str) -> Path:
        return self.root / key

    def _fail(self, what: str, key: str, exc: OSError) -> TierError:
        return TierError(f"{self.description}: {what} {key} failed: {exc.strerror or exc}")

    def head(self, key: str) -> ObjectInfo | None:
        try:
            status = os.stat(self._path(key))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._fail("head", key, exc) from None
        return ObjectInfo(status.st_size, _etag(status))

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            with open(self._path(key), "rb") as source:
                return source.read(), _etag(os.fstat(source.fileno()))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._fail("get", key, exc) from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as source:
                return os.pread(source.fileno(), length, start)
        except OSError as exc:
            raise self._fail("range of", key, exc) from None

    def download(
        self, key: str, out: BinaryIO, progress: Callable[[int], None] | None = None
    ) -> int | None:
        total = 0
        try:
            with open(self._path(key), "rb") as source:
                while chunk := source.read(DOWNLOAD_CHUNK):
                    out.write(chunk)
                    total += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._fail("get", key, exc) from None
        return total

    def _temporary(self, key: str, data: Path | bytes) -> Path:
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = final.parent / f".tmp-{final.name}-{os.getpid()}-{secrets.token_hex(4)}"
        with open(temp, "xb") as out:
            if isinstance(data, bytes):
                out.write(data)
            else:
                with open(data, "rb") as source:
                    while chunk := source.read(DOWNLOAD_CHUNK):
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        return temp

    def put_new(self, key: str, source: Path | bytes) -> bool:
        temp: Path | None = None
        try:
            if self._path(key).exists():
                return False
            temp = self._temporary(key, source)
            try:
                os.link(temp, self._path(key))
            except FileExistsError:
                return False
            fsync_directory(self._path(key).parent)
            return True
        except OSError as exc:
            raise self._fail("upload of", key, exc) from None
        finally:
            if temp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temp)

    def put_if(self, key: str, data: bytes, etag: str | None) -> str:
        final = self._path(key)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(final.parent / f".lock-{final.name}", "a") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                current = self.head(key)
                if (None if current is None else current.etag) != etag:
                    raise PreconditionFailed(f"{self.description}: {key} changed meanwhile")
                temp = self._temporary(key, data)
                os.rename(temp, final)
                fsync_directory(final.parent)
                return _etag(os.stat(final))
        except TierError:
            raise
        except OSError as exc:
            raise self._fail("update of", key, exc) from None


def _etag(status: os.stat_result) -> str:
    return f'"{status.st_ino:x}-{status.st_size:x}-{status.st_ctime_ns:x}"'
