"""The ready gate, driven by trio alone."""

from __future__ import annotations

import errno

import pyfuse3
import pytest
import trio
import trio.testing

from artifactfs.fs.gate import GateState, ReadyGate


def test_waiters_block_until_ready() -> None:
    async def main() -> None:
        gate = ReadyGate()
        passed: list[int] = []

        async def waiter(n: int) -> None:
            await gate.wait()
            passed.append(n)

        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(waiter, n)
            await trio.testing.wait_all_tasks_blocked()
            assert passed == [] and gate.state is GateState.PREPARING
            gate.open()
        assert sorted(passed) == [0, 1, 2]
        await gate.wait()  # returns at once when ready

    trio.run(main)


def test_failure_raises_eio_at_once_and_reset_rearms() -> None:
    async def main() -> None:
        gate = ReadyGate()
        errors: list[int] = []

        async def waiter() -> None:
            try:
                await gate.wait()
            except pyfuse3.FUSEError as exc:
                errors.append(exc.errno)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            gate.fail("connection refused")
        assert errors == [errno.EIO]
        assert (gate.state, gate.error) == (GateState.FAILED, "connection refused")
        with pytest.raises(pyfuse3.FUSEError):
            await gate.wait()

        gate.reset()
        assert (gate.state, gate.error) == (GateState.PREPARING, None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gate.wait)
            await trio.testing.wait_all_tasks_blocked()
            gate.open()

    trio.run(main)
