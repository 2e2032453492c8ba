"""Interleaved measurement rounds: warm-up rounds first (unrecorded), then every measurement
once a round, in an order rotated by one from the round before, so that no measurement always
runs first (on a cold machine) or right after the same other one (on its leftovers). Each
measurement gets a fresh directory, removed after it unless something is still mounted there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from .mounts import remove_tree

Job = Callable[[Path, bool], str]
"""A measurement: given its fresh directory and whether to record its samples, a note."""
J = TypeVar("J")


@dataclass(frozen=True)
class Round(Generic[J]):
    number: int
    """From 0, warm-up rounds included."""
    record: bool
    """False in a warm-up round."""
    label: str
    """``warm-up`` or ``run N/RUNS``, for the progress lines."""
    jobs: list[tuple[str, J]]
    """Every named measurement, in this round's order."""


def rotating_rounds(jobs: Sequence[tuple[str, J]], runs: int, warmup: int) -> Iterator[Round[J]]:
    """``warmup`` unrecorded rounds, then ``runs`` recorded ones, each with ``jobs`` rotated
    by its number."""
    for number in range(warmup + runs):
        record = number >= warmup
        label = f"run {number - warmup + 1}/{runs}" if record else "warm-up"
        shift = number % len(jobs)
        yield Round(number, record, label, [*jobs[shift:], *jobs[:shift]])


@contextlib.contextmanager
def job_directory(path: Path) -> Iterator[Path]:
    """A new directory for one measurement, removed afterwards (see ``remove_tree``)."""
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        remove_tree(path)
