"""What to fetch ahead of a reader of a Hub file: the read-ahead policy, apart from fetching.

- A reader that reads sequentially gets a window that doubles each time it has used half of
  it (1 MiB up to 64 MiB): read-ahead grows with what is read, so a reader that stops early
  has cost at most about twice what it read. A read elsewhere starts over.
- In a safetensors file whose tensor offsets are known (layout.py), the window stops at the
  end of the tensor being read, and starts only once the reader is clearly inside a tensor:
  ``safe_open`` + one tensor costs that tensor, not a window past it. A reader that goes on
  more than ``CROSSING`` past a tensor's end is reading the file, not a tensor: from then on
  the window streams over tensor boundaries.

Pure logic on offsets (no I/O), so it is tested on its own (tests/test_1_hub_window.py).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from ...cas.partial import BLOCK

FIRST_WINDOW = 1 << 20
MAX_WINDOW = 64 << 20
CROSSING = 2 * BLOCK
"""How far past a tensor's end a reader must go before read-ahead streams on: more than the
kernel reads past a mapped tensor without anyone asking (its read-around of a faulting page
and the asynchronous read-ahead after it: up to about 192 KiB at the default 128 KiB). Until
then reads past the end are fetched as asked, rounded to blocks, and nothing ahead of them."""


@dataclass
class ReadAhead:
    """The read-ahead state of one open file."""

    next_offset: int = -1
    window: int = 0
    prefetched_to: int = 0
    """Where the read-ahead asked for so far ends."""
    tensor_end: int = 0
    """The end of the tensor read-ahead stops at (safetensors files), 0 if none."""
    streaming: bool = False
    """The reader went past a tensor's end: read-ahead no longer stops at tensors."""

    def after_read(
        self, offset: int, size: int, file_size: int, boundaries: Sequence[int] | None
    ) -> tuple[int, int] | None:
        """The reader just read ``size`` bytes at ``offset``: the byte range to fetch ahead
        of it now, or None."""
        sequential = offset == self.next_offset
        position = offset + size
        self.next_offset = position
        if not sequential:
            self.window = self.prefetched_to = self.tensor_end = 0
            self.streaming = False
            return None
        limit = self._limit(position, file_size, boundaries)
        if self.window == 0:
            self.window = FIRST_WINDOW
        elif self.prefetched_to - position < self.window // 2:
            self.window = min(self.window * 2, MAX_WINDOW)
        else:
            return None
        start = max(position, self.prefetched_to)
        end = min(position + self.window, limit)
        self.prefetched_to = max(self.prefetched_to, end)
        return (start, end) if start < end else None

    def _limit(self, position: int, file_size: int, boundaries: Sequence[int] | None) -> int:
        """Where read-ahead must stop: the end of the file, or of the tensor being read."""
        if self.streaming or not boundaries:
            return file_size
        if not self.tensor_end:
            index = bisect_left(boundaries, position)
            if index == len(boundaries):
                return file_size
            if index > 0 and position - boundaries[index - 1] <= CROSSING:
                # only just into this tensor: maybe the kernel reading past the one before,
                # maybe its start; read ahead once the reader is clearly in it
                return position
            self.tensor_end = boundaries[index]
        elif position > self.tensor_end + CROSSING:
            self.streaming = True  # read on past a tensor: reading the file, not a tensor
            return file_size
        return min(self.tensor_end, file_size)  # past it, by demand only
