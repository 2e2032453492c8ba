"""Coalescing in the blob fetcher, with a fetch function standing in for the network.

The clock is trio's MockClock, so the gather windows cost no real time and batching does not
depend on how fast this machine is.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping

import pytest
import trio
import trio.testing

from artifactfs.errors import BlobUnavailable, SourceError
from artifactfs.sources.git.fetcher import BlobFetcher


class FakeOrigin:
    def __init__(self, missing: set[str] | None = None) -> None:
        self.batches: list[list[str]] = []
        self.stored: set[str] = set()
        self.missing = missing or set()
        self.fail = False
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.land_first: set[str] = set()
        """Published (and reported) before the fetch waits for ``release``."""

    def fetch(self, wanted: Mapping[str, int | None], published: Callable[[str], None]) -> set[str]:
        oids = list(wanted)
        failing = self.fail  # decided as the fetch starts
        for early in self.land_first & set(oids):
            self.stored.add(early)
            published(early)
        self.entered.set()
        assert self.release.wait(10)
        self.batches.append(list(oids))
        if failing:
            raise SourceError("connection refused")
        got = {oid for oid in oids if oid not in self.missing}
        self.stored |= got
        return got

    def present(self, oid: str) -> bool:
        return oid in self.stored


def run_with(origin: FakeOrigin, body: Callable[[BlobFetcher], Awaitable[None]]) -> None:
    async def main() -> None:
        fetcher = BlobFetcher(origin.fetch, origin.present, parallel_fetches=2)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetcher.run)
            await trio.testing.wait_all_tasks_blocked()  # the batcher waits for a first miss
            await body(fetcher)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def oid(n: int) -> str:
    return f"{n:040x}"


def test_simultaneous_misses_share_one_batch() -> None:
    origin = FakeOrigin()

    async def body(fetcher: BlobFetcher) -> None:
        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(fetcher.ensure, {oid(n): 1})
        assert len(origin.batches) == 1
        assert sorted(origin.batches[0]) == [oid(n) for n in range(50)]

    run_with(origin, body)


def test_a_trickle_of_misses_is_gathered_until_quiet() -> None:
    origin = FakeOrigin()

    async def body(fetcher: BlobFetcher) -> None:
        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(fetcher.ensure, {oid(n): 1})
                await trio.sleep(0.001)  # mock time: arrivals 1 ms apart
        assert origin.batches == [[oid(n) for n in range(5)]]

    run_with(origin, body)


def test_one_blob_many_waiters_one_fetch() -> None:
    origin = FakeOrigin()
    origin.release.clear()

    async def body(fetcher: BlobFetcher) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(fetcher.ensure, {"a" * 40: 1})
            await trio.testing.wait_all_tasks_blocked()
            origin.release.set()
        assert origin.batches == [["a" * 40]]
        await fetcher.ensure({"a" * 40: 1})  # published meanwhile: checked again, not fetched
        assert origin.batches == [["a" * 40]]

    run_with(origin, body)


def test_missing_blobs_and_failures_reach_every_waiter() -> None:
    origin = FakeOrigin(missing={"b" * 40})

    async def body(fetcher: BlobFetcher) -> None:
        await fetcher.ensure({"a" * 40: 1})
        with pytest.raises(BlobUnavailable, match="did not send it"):
            await fetcher.ensure({"b" * 40: 1})
        origin.fail = True
        with pytest.raises(BlobUnavailable, match="connection refused"):
            await fetcher.ensure({"c" * 40: 1})
        origin.fail = False
        await fetcher.ensure({"c" * 40: 1})  # a later read retries
        assert origin.batches[-1] == ["c" * 40]

    run_with(origin, body)


def test_close_fails_waiters_at_once() -> None:
    origin = FakeOrigin()
    origin.release.clear()

    async def body(fetcher: BlobFetcher) -> None:
        failures: list[str] = []

        async def reader() -> None:
            try:
                await fetcher.ensure({"a" * 40: 1})
            except BlobUnavailable as exc:
                failures.append(str(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            fetcher.close("unmounting")
        assert failures == [f"blob {'a' * 40}: unmounting"]
        with pytest.raises(BlobUnavailable, match="unmounting"):
            await fetcher.ensure({"d" * 40: 1})
        origin.release.set()

    run_with(origin, body)


async def until(condition: Callable[[], bool]) -> None:
    """Wait for the fetch threads (real threads under a mock clock) to get there."""
    for _ in range(100_000):
        if condition():
            return
        await trio.to_thread.run_sync(lambda: None)  # real time passes, not only trio's
    raise AssertionError("the condition never held")


def test_guesses_go_in_their_own_batch() -> None:
    origin = FakeOrigin()

    async def body(fetcher: BlobFetcher) -> None:
        fetcher.prefetch({oid(n): None for n in range(10, 14)})
        await fetcher.ensure({oid(1): None})
        await until(lambda: len(origin.stored) == 5)

    run_with(origin, body)
    assert sorted(map(sorted, origin.batches)) == [[oid(1)], sorted(oid(n) for n in range(10, 14))]
    assert origin.stored == {oid(n) for n in (1, 10, 11, 12, 13)}


def test_a_failed_guess_never_fails_a_reader() -> None:
    origin = FakeOrigin()
    origin.release.clear()
    origin.fail = True

    async def body(fetcher: BlobFetcher) -> None:
        fetcher.prefetch({oid(1): None, oid(2): None})
        await trio.to_thread.run_sync(origin.entered.wait, 10)  # the guess is in flight
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetcher.ensure, {oid(1): None})
            await trio.testing.wait_all_tasks_blocked()
            origin.fail = False  # the guess batch fails as it was taken; the retry works
            origin.release.set()

    run_with(origin, body)
    assert origin.batches == [[oid(1), oid(2)], [oid(1)]]
    assert origin.stored == {oid(1)}


def test_a_queued_guess_a_reader_wants_goes_alone() -> None:
    origin = FakeOrigin()

    async def body(fetcher: BlobFetcher) -> None:
        fetcher.prefetch({oid(n): None for n in range(20)})
        await fetcher.ensure({oid(7): None})
        await until(lambda: len(origin.stored) == 20)

    run_with(origin, body)
    assert [oid(7)] in origin.batches
    assert all(oid(7) not in batch for batch in origin.batches if batch != [oid(7)])


def test_a_reader_waits_for_its_blob_not_its_whole_batch() -> None:
    origin = FakeOrigin()
    origin.release.clear()  # the batch does not end until the test says so
    origin.land_first = {oid(1)}

    async def body(fetcher: BlobFetcher) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetcher.ensure, {oid(2): 1})
            await fetcher.ensure({oid(1): 1})  # returns while oid(2) is still on its way
            assert origin.stored == {oid(1)} and not origin.batches
            origin.release.set()
        assert origin.batches == [[oid(2), oid(1)]] or origin.batches == [[oid(1), oid(2)]]

    run_with(origin, body)


def test_a_blob_that_landed_before_its_batch_failed_is_served() -> None:
    origin = FakeOrigin()
    origin.release.clear()
    origin.fail = True
    origin.land_first = {oid(1)}

    async def body(fetcher: BlobFetcher) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetcher.ensure, {oid(1): 1})
            await trio.to_thread.run_sync(origin.entered.wait, 10)
            origin.release.set()
        with pytest.raises(BlobUnavailable, match="connection refused"):
            await fetcher.ensure({oid(2): 1})
        await fetcher.ensure({oid(1): 1})  # in the CAS: no fetch, no error

    run_with(origin, body)


def test_settle_waits_for_guesses_without_making_them_demands() -> None:
    origin = FakeOrigin(missing={oid(3)})

    async def body(fetcher: BlobFetcher) -> None:
        await fetcher.settle([oid(99)])  # nothing pending: at once
        origin.release.clear()
        fetcher.prefetch({oid(n): 1 for n in range(5)})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetcher.settle, [oid(n) for n in range(5)])
            await trio.to_thread.run_sync(origin.entered.wait, 10)
            assert not origin.batches  # the guess batch is held: settle still waits
            origin.release.set()
        assert origin.batches == [[oid(n) for n in range(5)]]  # one batch, still a guess
        assert origin.stored == {oid(n) for n in range(5)} - {oid(3)}

    run_with(origin, body)
