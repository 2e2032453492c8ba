"""The write hold a checkpoint takes, driven by trio alone: it waits for the changes already
running, changes begun meanwhile wait for it, reads are not changes, and a change stuck for
longer than the drain limit makes the hold give up (``Busy``) rather than wait for ever."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from artifactfs.fs import hold as hold_module
from artifactfs.fs.hold import Busy, WriteHold, is_change


def test_which_operations_are_changes() -> None:
    assert is_change("write", (1, 2, 0, b"x"))
    assert is_change("rename", (1, b"a", 1, b"b", 0, None))
    assert is_change("open", (5, os.O_WRONLY, None))
    assert is_change("open", (5, os.O_RDONLY | os.O_TRUNC, None))
    assert not is_change("open", (5, os.O_RDONLY, None))
    assert not is_change("read", (5, 0, 10))
    assert not is_change("lookup", (1, b"a", None))


def test_the_hold_waits_for_running_changes_and_holds_new_ones() -> None:
    async def main() -> None:
        hold = WriteHold()
        events: list[str] = []
        finish_first = trio.Event()

        async def change(name: str, until: trio.Event | None = None) -> None:
            async with hold.change():
                events.append(f"{name} begins")
                if until is not None:
                    await until.wait()
                events.append(f"{name} ends")

        async def checkpoint() -> None:
            async with hold.held():
                events.append("held")
                await trio.testing.wait_all_tasks_blocked()
                events.append("released")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(change, "first", finish_first)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(checkpoint)
            await trio.testing.wait_all_tasks_blocked()
            assert "held" not in events  # the running change goes first
            nursery.start_soon(change, "second")
            await trio.testing.wait_all_tasks_blocked()
            finish_first.set()
        assert events == [
            "first begins",
            "first ends",
            "held",
            "released",
            "second begins",
            "second ends",
        ]
        assert hold.changes == 2

    trio.run(main)


def test_a_stuck_change_makes_the_hold_give_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hold_module, "DRAIN_SECONDS", 0.05)

    async def main() -> None:
        hold = WriteHold()
        stuck = trio.Event()

        async def change() -> None:
            async with hold.change():
                await stuck.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(change)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(Busy):
                async with hold.held():
                    raise AssertionError("held while a change runs")
            async with hold.change():  # the hold is off again
                pass
            stuck.set()

    trio.run(main)
