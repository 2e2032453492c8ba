"""Coalescing in the blob fetcher, with a fetch function standing in for the network."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
import trio
import trio.testing

from artifactfs.errors import SourceError
from artifactfs.fetching import BlobFetcher, BlobUnavailable


class FakeOrigin:
    def __init__(self, missing: set[str] | None = None, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.stored: set[str] = set()
        self.missing = missing or set()
        self.fail = fail
        self.release = threading.Event()
        self.release.set()
        self.lock = threading.Lock()

    def fetch(self, oids: Sequence[str]) -> set[str]:
        self.release.wait(10)
        with self.lock:
            self.batches.append(list(oids))
        if self.fail:
            raise SourceError("connection refused")
        got = {oid for oid in oids if oid not in self.missing}
        self.stored |= got
        return got

    def present(self, oid: str) -> bool:
        return oid in self.stored


def run_with(origin: FakeOrigin, body: object) -> None:
    async def main() -> None:
        fetcher = BlobFetcher(origin.fetch, origin.present, parallel_fetches=2)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetcher.run)
            await body(fetcher)  # type: ignore[operator]
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_simultaneous_misses_share_one_batch() -> None:
    origin = FakeOrigin()

    async def body(fetcher: BlobFetcher) -> None:
        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(fetcher.ensure, [f"{n:040x}"])
        assert len(origin.batches) <= 2
        assert sorted(oid for batch in origin.batches for oid in batch) == sorted(
            f"{n:040x}" for n in range(50)
        )

    run_with(origin, body)


def test_one_blob_many_waiters_one_fetch() -> None:
    origin = FakeOrigin()
    origin.release.clear()

    async def body(fetcher: BlobFetcher) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(fetcher.ensure, ["a" * 40])
            await trio.testing.wait_all_tasks_blocked()
            origin.release.set()
        assert origin.batches == [["a" * 40]]
        await fetcher.ensure(["a" * 40])  # now present: no fetch at all
        assert len(origin.batches) == 1

    run_with(origin, body)


def test_missing_blobs_and_failures_reach_every_waiter() -> None:
    origin = FakeOrigin(missing={"b" * 40})

    async def body(fetcher: BlobFetcher) -> None:
        await fetcher.ensure(["a" * 40])
        with pytest.raises(BlobUnavailable, match="did not send it"):
            await fetcher.ensure(["b" * 40])
        origin.fail = True
        with pytest.raises(BlobUnavailable, match="connection refused"):
            await fetcher.ensure(["c" * 40])
        origin.fail = False
        await fetcher.ensure(["c" * 40])  # a later read retries
        assert origin.batches[-1] == ["c" * 40]

    run_with(origin, body)
