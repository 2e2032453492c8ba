"""Hub files as the operations read them: by range, through ``reader.RangedBlobs``."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

import pyfuse3

from ...fs.content import BlobReader, digest_of
from ...fs.generations import Generation
from ...snapshot import Row
from ..spec import HubSourceSpec
from .client import HubClient
from .reader import Cursor, HubBlob, RangedBlobs, Unavailable

log = logging.getLogger(__name__)


class HubContent:
    def __init__(
        self, blobs: RangedBlobs, client: Callable[[], HubClient], spec: HubSourceSpec
    ) -> None:
        self._blobs = blobs
        self._client = client
        self._spec = spec

    def _blob(self, generation: Generation, row: Row) -> HubBlob:
        index = generation.index
        path = index.path_of(row.inode).decode("utf-8", "surrogateescape")
        return HubBlob(
            digest=digest_of(generation, row),
            size=row.size or 0,
            url=self._client().url(self._spec, index.meta.commit, path),
            verify_first=row.sha256 is None,
            safetensors=path.endswith(".safetensors"),
        )

    def open(self, generation: Generation, row: Row, kernel_inode: int) -> BlobReader:
        return _RangedReader(self._blobs, self._blob(generation, row), kernel_inode)

    async def cached_bytes(self, generation: Generation, row: Row) -> int:
        return await self._blobs.cached_bytes(self._blob(generation, row))

    async def with_size(self, generation: Generation, row: Row, batch_hint: bool) -> Row:
        return row  # the Hub lists every size


class _RangedReader:
    def __init__(self, blobs: RangedBlobs, blob: HubBlob, kernel_inode: int) -> None:
        self._blobs = blobs
        self._blob = blob
        self._cursor = Cursor(kernel_inode=kernel_inode)

    async def read(self, offset: int, size: int) -> bytes:
        try:
            return await self._blobs.read(self._blob, offset, size, self._cursor)
        except Unavailable as exc:
            log.error("read of %s failed: %s", self._blob.url, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None

    def close(self) -> None:
        self._cursor.close()
