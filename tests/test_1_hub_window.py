"""The Hub read-ahead policy on offsets alone: windows that grow with what is read, stop at a
tensor's end, ignore the kernel's reads just past a tensor, and stream once a reader goes on."""

from __future__ import annotations

from artifactfs.sources.hub.window import CROSSING, FIRST_WINDOW, MAX_WINDOW, ReadAhead

MiB = 1 << 20
SIZE = 1 << 30
CHUNK = 128 * 1024


def read_sequentially(
    ahead: ReadAhead, start: int, end: int, boundaries: list[int] | None = None
) -> list[tuple[int, int]]:
    """Feed reads of CHUNK from ``start`` to ``end``; every range asked for."""
    asked = []
    for offset in range(start, end, CHUNK):
        wanted = ahead.after_read(offset, min(CHUNK, end - offset), SIZE, boundaries)
        if wanted is not None:
            asked.append(wanted)
    return asked


def test_a_first_read_asks_nothing_and_windows_double_up_to_the_maximum() -> None:
    ahead = ReadAhead()
    assert ahead.after_read(0, CHUNK, SIZE, None) is None  # one read is not a pattern yet
    asked = read_sequentially(ahead, CHUNK, 200 * MiB)
    assert asked[0] == (2 * CHUNK, 2 * CHUNK + FIRST_WINDOW)
    sizes = [end - start for start, end in asked]
    assert max(sizes) <= MAX_WINDOW
    assert ahead.window == MAX_WINDOW
    ends = [end for _, end in asked]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)  # never asks twice
    assert asked[-1][1] - 200 * MiB <= MAX_WINDOW


def test_a_random_read_starts_over() -> None:
    ahead = ReadAhead()
    read_sequentially(ahead, 0, 32 * MiB)
    assert ahead.window > FIRST_WINDOW
    assert ahead.after_read(500 * MiB, CHUNK, SIZE, None) is None
    assert (ahead.window, ahead.prefetched_to) == (0, 0)


def test_the_window_stops_at_the_tensor_being_read() -> None:
    header_end, tensor = 4096, 8 * MiB
    boundaries = [header_end + i * tensor for i in range(9)]
    third = boundaries[2]
    ahead = ReadAhead()
    ahead.after_read(third, CHUNK, SIZE, boundaries)  # a page fault at the tensor's start
    asked = read_sequentially(ahead, third + CHUNK, third + tensor, boundaries)
    assert asked and all(end <= third + tensor for _, end in asked)
    assert ahead.tensor_end == third + tensor
    # the kernel reads a little past the end: fetched as asked, nothing ahead
    assert read_sequentially(ahead, third + tensor, third + tensor + CROSSING, boundaries) == []
    assert not ahead.streaming


def test_a_reader_that_goes_on_past_a_tensor_streams() -> None:
    boundaries = [4096 + i * 8 * MiB for i in range(9)]
    ahead = ReadAhead()
    asked = read_sequentially(ahead, 0, 24 * MiB, boundaries)
    assert ahead.streaming
    assert asked[-1][1] > boundaries[3]  # reads ahead across tensor ends now


def test_a_read_just_inside_the_next_tensor_asks_nothing() -> None:
    boundaries = [4096, 4096 + 8 * MiB, 4096 + 16 * MiB]
    ahead = ReadAhead()
    end = boundaries[1]
    ahead.after_read(end, CHUNK, SIZE, boundaries)
    assert ahead.after_read(end + CHUNK, CHUNK, SIZE, boundaries) is None
    assert ahead.tensor_end == 0  # not decided yet: maybe the kernel, maybe a new reader
