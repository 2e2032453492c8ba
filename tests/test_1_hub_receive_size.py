"""The Hub client reads its sockets in large pieces (sources/hub/client.py, RECEIVE_BYTES):
httpcore2's own 64 KiB meant 16,000 passes through the FUSE loop per GiB."""

from __future__ import annotations

from httpcore2._async.http11 import AsyncHTTP11Connection

from artifactfs.sources.counters import FetchCounters
from artifactfs.sources.hub.client import RECEIVE_BYTES, HubClient


def test_a_hub_client_raises_the_per_read_size() -> None:
    HubClient("http://127.0.0.1:9", None, 5.0, "artifactfs-test", FetchCounters())
    assert RECEIVE_BYTES == 1 << 20
    assert AsyncHTTP11Connection.READ_NUM_BYTES == RECEIVE_BYTES
