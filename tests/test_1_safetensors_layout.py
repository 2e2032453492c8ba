"""The safetensors layout that stops read-ahead at a tensor's end: parsed from untrusted bytes,
so anything odd must give no layout rather than a wrong one or an exception."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save

from artifactfs.sources.hub.layout import MAX_HEADER, header_length, tensor_boundaries


def split(data: bytes) -> tuple[int, bytes]:
    (length,) = struct.unpack_from("<Q", data)
    return length, data[8 : 8 + length]


def test_boundaries_of_a_real_file() -> None:
    data = save(
        {
            "b": np.zeros((4, 4), dtype=np.float32),  # 64 bytes
            "a": np.zeros(3, dtype=np.int8),  # 3 bytes
        },
        metadata={"format": "np"},
    )
    length, header = split(data)
    assert header_length(data[:8], len(data)) == length
    base = 8 + length
    parsed = json.loads(header)
    expected = {base}
    for name in ("a", "b"):
        begin, end = parsed[name]["data_offsets"]
        expected |= {base + begin, base + end}
    assert tensor_boundaries(header, len(data)) == sorted(expected)
    assert tensor_boundaries(header, len(data))[-1] == len(data)


@pytest.mark.parametrize(
    ("prefix", "size", "expected"),
    [
        (struct.pack("<Q", 100), 108, 100),
        (struct.pack("<Q", 100), 107, None),  # longer than the file
        (struct.pack("<Q", 1), 100, None),  # cannot hold "{}"
        (struct.pack("<Q", MAX_HEADER + 1), 1 << 40, None),
        (b"\x01\x00", 100, None),  # too short to hold the length
    ],
)
def test_header_length(prefix: bytes, size: int, expected: int | None) -> None:
    assert header_length(prefix, size) == expected


@pytest.mark.parametrize(
    "header",
    [
        b"\xff\xfe not utf-8",
        b"[1, 2]",
        b"{not json",
        b'{"t": {"data_offsets": [0]}}',
        b'{"t": {"data_offsets": [8, 4]}}',
        b'{"t": {"data_offsets": [-1, 4]}}',
        b'{"t": {"data_offsets": [0, 4.5]}}',
        b'{"t": {"data_offsets": [0, true]}}',
        b'{"t": {"data_offsets": [0, 1000000]}}',  # beyond the file
        b'{"t": "offsets"}',
    ],
)
def test_malformed_headers_give_no_layout(header: bytes) -> None:
    assert tensor_boundaries(header, 8 + len(header) + 64) is None


def test_metadata_is_not_a_tensor() -> None:
    header = b'{"__metadata__": {"format": "pt"}, "t": {"data_offsets": [0, 64]}}'
    base = 8 + len(header)
    assert tensor_boundaries(header, base + 64) == [base, base + 64]
