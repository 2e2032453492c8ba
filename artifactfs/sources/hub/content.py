"""Hub files as a mount reads them (``base.Content``): by range, through ``ranged.RangedBlobs``.

A cold read, hop by hop: ``_RangedReader.read`` → ``ranged.RangedBlobs.read`` (waits for the
blocks it covers, asks for what is missing and for the read-ahead ``window.py`` wants) →
``client.HubClient.fetch`` (HTTP Range) → ``cas.partial.PartialBlob``; once whole and verified
the partial is moved into the CAS, and reads are served from the CAS file. With a shared tier
(``tier.url``) the same ranges are asked of the tier first when it holds the blob
(``tier_ranges.TierRanges``), and of the Hub otherwise or for what the tier failed to give.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import trio

from ... import __version__
from ...cas import ContentStore
from ...errors import ReadError
from ...snapshot import Row, SnapshotIndex
from ..base import BlobReader, ContentHost, SourceSettings
from .client import HubClient, file_url
from .hf_cache import HubCache
from .ranged import Cursor, HubBlob, RangedBlobs
from .spec import HubSourceSpec
from .tier_ranges import TierRanges

log = logging.getLogger(__name__)

PREFETCH_FILES = 4
"""Files a prefetch fetches at once (each by up to 8 parallel ranges, ranged.py)."""


@dataclass(frozen=True)
class HubRepository:
    """Where a mount's Hub files are, and the token to show for them."""

    spec: HubSourceSpec
    endpoint: str
    token: str | None
    offline: bool = False
    """Fetch nothing: bytes that are not stored fail at once."""
    hf_cache: HubCache | None = None
    """The user's huggingface_hub cache, taken from before fetching (None: not looked at)."""


class HubContent:
    def __init__(
        self, repository: HubRepository, settings: SourceSettings, host: ContentHost
    ) -> None:
        self._repository = repository
        self._settings = settings
        self._client: HubClient | None = None
        cas = ContentStore(settings.cas_dir, settings.usage)
        hf_cache = repository.hf_cache
        self._blobs = RangedBlobs(
            cas,
            self._http,
            settings.io_timeout,
            host.forget_cached,
            offline=repository.offline,
            take_local=(
                None
                if hf_cache is None
                else lambda blob: hf_cache.take(cas, blob.digest, blob.size)
            ),
            tier=None if settings.tier is None else TierRanges(settings.tier, cas),
        )

    def _http(self) -> HubClient:
        """One HTTP client for the mount's life, made on first use."""
        if self._client is None:
            self._client = HubClient(
                self._repository.endpoint,
                self._repository.token,
                self._settings.io_timeout,
                f"artifactfs/{__version__}",
                self._settings.counters,
            )
        return self._client

    def _blob(self, snapshot: SnapshotIndex, row: Row) -> HubBlob:
        path = snapshot.path_of(row.inode).decode("utf-8", "surrogateescape")
        return HubBlob(
            digest=snapshot.digest_of(row),
            size=row.size or 0,
            url=file_url(
                self._repository.endpoint, self._repository.spec, snapshot.meta.commit, path
            ),
            verify_first=row.sha256 is None,
            safetensors=path.endswith(".safetensors"),
        )

    def reader(self, snapshot: SnapshotIndex, row: Row) -> BlobReader:
        return _RangedReader(self._blobs, self._blob(snapshot, row), (snapshot, row))

    async def cached_bytes(self, snapshot: SnapshotIndex, row: Row) -> int:
        return await self._blobs.cached_bytes(self._blob(snapshot, row))

    async def with_size(self, snapshot: SnapshotIndex, row: Row) -> Row:
        return row  # the Hub lists every size

    async def fetch(self, snapshot: SnapshotIndex, rows: list[Row]) -> list[Row]:
        """Each file whole (by range, in parallel; verified and kept), a few files at once."""
        failed: list[Row] = []
        files = trio.Semaphore(PREFETCH_FILES)

        async def one(row: Row) -> None:
            async with files:
                try:
                    await self._blobs.fetch_whole(self._blob(snapshot, row))
                except ReadError as exc:
                    log.error("prefetch of %s failed: %s", snapshot.path_of(row.inode), exc)
                    failed.append(row)

        async with trio.open_nursery() as nursery:
            for row in rows:
                if row.size:
                    nursery.start_soon(one, row)
        return failed

    async def local_path(self, snapshot: SnapshotIndex, row: Row) -> Path:
        """The whole file, fetched by range if it is not kept yet, verified, kept."""
        return await self._blobs.kept_file(self._blob(snapshot, row))

    def listed(self, snapshot: SnapshotIndex, directory: Row) -> None:
        pass  # the read-ahead of a Hub file follows its own reader (window.py)

    def retired(self, snapshot: SnapshotIndex) -> None:
        self._blobs.forget_snapshot(snapshot)

    async def run(self) -> None:
        await self._blobs.run()

    def close(self, reason: str) -> None:
        self._blobs.close(reason)


class _RangedReader:
    def __init__(self, blobs: RangedBlobs, blob: HubBlob, entry: tuple[SnapshotIndex, Row]) -> None:
        self._blobs = blobs
        self._blob = blob
        self._cursor = Cursor(entry=entry)

    async def read(self, offset: int, size: int) -> bytes:
        return await self._blobs.read(self._blob, offset, size, self._cursor)

    async def complete(self) -> bool:
        return await self._blobs.complete(self._blob)

    def close(self) -> None:
        self._cursor.close()
