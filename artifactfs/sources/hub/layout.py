"""Where the tensors of a safetensors file begin and end, so read-ahead can stop at them.

A job that opens a checkpoint with ``safetensors.safe_open`` and reads one tensor reads the
header, then that tensor's bytes in order. A read-ahead window that kept growing would fetch
megabytes past the tensor's end that nobody asked for. Knowing the layout, the reader caps its
read-ahead at the end of the tensor being read until the reader goes past it (then it streams).

The format: 8 bytes, little-endian, the length N of a JSON header; the header maps tensor names
to ``{"dtype", "shape", "data_offsets": [begin, end]}`` relative to the byte after the header,
plus an optional ``__metadata__``. The header comes from the remote file, so it is untrusted:
anything malformed, oversized or outside the file yields no layout (plain read-ahead), never an
error.
"""

from __future__ import annotations

import json
import struct

MAX_HEADER = 16 << 20
"""Largest header we parse; safetensors itself refuses headers over 100 MB."""


def header_length(prefix: bytes, file_size: int) -> int | None:
    """N from the first 8 bytes, or None if it cannot be a safetensors header."""
    if len(prefix) < 8:
        return None
    (length,) = struct.unpack_from("<Q", prefix)
    if length < 2 or length > MAX_HEADER or 8 + length > file_size:
        return None
    return int(length)


def tensor_boundaries(header: bytes, file_size: int) -> list[int] | None:
    """The sorted absolute offsets where the header ends and each tensor begins and ends, from
    the JSON ``header`` (the N bytes after the length); None if it does not parse or fit."""
    try:
        parsed = json.loads(header)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(parsed, dict):
        return None
    base = 8 + len(header)
    edges = {base}
    for name, entry in parsed.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2):
            return None
        begin, end = offsets
        if not (type(begin) is int and type(end) is int and 0 <= begin <= end):
            return None
        if base + end > file_size:
            return None
        edges.update((base + begin, base + end))
    return sorted(edges)
