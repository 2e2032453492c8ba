"""Receive a pack from a git server into an unnamed temporary file and read its objects.

We never have objects to offer (every fetch starts from nothing we claim to own), and we ask
for non-thin packs, so every delta in a received pack resolves within it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from dulwich.client import GitClient
from dulwich.errors import ApplyDeltaError, ChecksumMismatch, FileFormatException
from dulwich.object_format import get_object_format
from dulwich.objects import ObjectID, ShaFile
from dulwich.pack import PackData, PackInflater
from dulwich.refs import Ref

from ...errors import SourceError

# what dulwich raises on pack data that is not what it should be (besides its own errors,
# which transport.REMOTE_FAILURES covers)
_MALFORMED = (
    ValueError,
    zlib.error,
    struct.error,
    AssertionError,
    KeyError,
    IndexError,
    ApplyDeltaError,  # a delta that does not fit its base
    ChecksumMismatch,
    FileFormatException,  # ObjectFormatException too
)

WantsFn = Callable[[Mapping[bytes, bytes]], list[bytes]]
"""Given the refs the server listed, the object ids to fetch (empty: fetch nothing)."""


class _NothingToOffer:
    """A graph walker with no ``have`` lines: we hold no objects the server should know of."""

    shallow: set[ObjectID] = set()

    def __next__(self) -> None:
        return None

    def ack(self, sha: ObjectID, /) -> None:
        pass

    def nak(self) -> None:
        pass


@dataclass(frozen=True)
class ReceivedPack:
    file: IO[bytes]
    """The pack data, positioned at its start; empty when nothing was wanted."""
    object_format: str
    """``sha1`` or ``sha256``, as the server announced it."""
    symrefs: Mapping[bytes, bytes] = field(default_factory=dict)
    """Symbolic refs the server listed (``HEAD`` -> ``refs/heads/main``), when it told."""


@contextmanager
def received_pack(
    client: GitClient,
    path: str,
    determine_wants: WantsFn,
    temp_dir: Path,
    on_bytes: Callable[[int], None],
    *,
    max_bytes: int,
    depth: int | None = None,
    filter_spec: bytes | None = None,
    ref_prefix: Sequence[bytes] | None = None,
) -> Iterator[ReceivedPack]:
    """Fetch a pack into a temporary file and yield it with the repository's object format.

    The file is unlinked from the start, so a crash leaves nothing behind. A server that sends
    more than ``max_bytes`` is cut off (SourceError): it cannot fill the disk.
    """
    with tempfile.TemporaryFile(dir=temp_dir, prefix="pack-") as out:
        received = 0

        def write(data: bytes) -> int:
            nonlocal received
            received += len(data)
            if received > max_bytes:
                raise SourceError(f"the server sent more than the {max_bytes} bytes expected")
            on_bytes(len(data))
            return out.write(data)

        def wants(refs: Mapping[Ref, ObjectID], depth: int | None = None) -> list[ObjectID]:
            listed = {bytes(name): bytes(oid) for name, oid in refs.items()}
            return [ObjectID(oid) for oid in determine_wants(listed)]

        result = client.fetch_pack(
            path,
            wants,
            _NothingToOffer(),
            write,
            depth=depth,
            filter_spec=filter_spec,
            ref_prefix=ref_prefix,
            protocol_version=2,
        )
        out.flush()
        out.seek(0)
        object_format = result.object_format or "sha1"
        if object_format not in ("sha1", "sha256"):
            raise ValueError(f"unsupported object format {object_format[:20]!r}")
        symrefs = {bytes(name): bytes(target) for name, target in result.symrefs.items()}
        yield ReceivedPack(out, object_format, symrefs)


def keep_pack(pack: IO[bytes], path: Path) -> None:
    """Copy a received pack to ``path`` atomically (temporary, fsync, rename), unless a pack
    is already there (kept packs are keyed by commit and never change)."""
    if path.exists():
        return
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(temp, "wb") as out:
            pack.seek(0)
            shutil.copyfileobj(pack, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o444)
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        pack.seek(0)


def object_id(obj: ShaFile, object_format: str) -> str:
    """The hex id of ``obj`` in its repository's hash (dulwich's ``.id`` is always sha1)."""
    return obj.get_id(get_object_format(object_format)).decode("ascii")


def iter_objects(pack: IO[bytes], object_format: str) -> Iterator[ShaFile]:
    """Every object of a received pack, deltas resolved (blocking; each object is held in
    memory while it is handled). Malformed pack data raises SourceError."""
    pack.seek(0, 2)
    if pack.tell() == 0:
        return
    pack.seek(0)
    try:
        data = PackData.from_file(pack, get_object_format(object_format))
        try:
            yield from PackInflater.for_pack_data(data)
        finally:
            data.close()
    except _MALFORMED as exc:
        raise SourceError(f"the server sent a malformed pack: {exc}"[:300]) from exc
