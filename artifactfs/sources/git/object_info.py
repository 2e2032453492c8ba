"""Protocol v2 ``object-info``: the sizes of many blobs in one round trip.

A blobless fetch gives us trees but no blob sizes, and ``ls -l`` must show true sizes without
downloading every blob (the weakness of the systems we measure against). git's upload-pack
answers ``object-info`` (git >= 2.34; advertised when the repository sets
``transfer.advertiseObjectInfo``). dulwich does not speak this command, so this module adds it
on top of dulwich's transports: a stateful connection (git://, ssh, a local subprocess) or a
smart-HTTP POST. When the server does not advertise it, ``query_sizes`` returns None and the
caller falls back to learning sizes from fetched blobs.

Wire format (gitprotocol-v2): the request is ``command=object-info``, a delimiter, ``size`` and
one ``oid <hex>`` per object, then a flush; the reply is ``size`` then ``<hex> <size>`` per
object (``<hex> `` with no size for an object the server does not have), then a flush.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from dulwich.client import (
    AbstractHttpGitClient,
    GitClient,
    TraditionalGitClient,
    negotiate_protocol_version,
)
from dulwich.protocol import Protocol, pkt_line

from ...errors import SourceError

BATCH = 5000
_SIZE_LINE = re.compile(rb"([0-9a-f]{40}|[0-9a-f]{64}) ?([0-9]{0,19})")
_MAX_SIZE = 2**63 - 1


def query_sizes(client: GitClient, path: str, oids: Sequence[str]) -> dict[str, int] | None:
    """Sizes of ``oids`` by object-info, or None if the server does not offer it (blocking).

    Objects the server does not know are missing from the result.
    """
    if not oids:
        return {}
    if isinstance(client, AbstractHttpGitClient):
        return _query_http(client, path, oids)
    if isinstance(client, TraditionalGitClient):
        return _query_stream(client, path, oids)
    return None


def _request(oids: Iterable[str], capabilities: set[bytes]) -> bytes:
    lines = [pkt_line(b"command=object-info\n")]
    if b"object-format=sha256" in capabilities:  # a sha256 server wants it said
        lines.append(pkt_line(b"object-format=sha256\n"))
    lines += [b"0001", pkt_line(b"size\n")]
    lines.extend(pkt_line(b"oid %s\n" % oid.encode("ascii")) for oid in oids)
    lines.append(pkt_line(None))
    return b"".join(lines)


def _capabilities(pkts: Iterable[bytes]) -> set[bytes]:
    return {pkt.strip() for pkt in pkts}


def _read_reply(pkts: Iterable[bytes], wanted: set[str], into: dict[str, int]) -> None:
    """Parse one object-info reply; reject anything we did not ask for or cannot trust."""
    iterator = iter(pkts)
    header = next(iterator, None)
    if header is None or header.strip() != b"size":
        raise SourceError(f"unexpected object-info reply header {header!r:.60}")
    for pkt in iterator:
        match = _SIZE_LINE.fullmatch(pkt.rstrip(b"\n"))
        if not match:
            raise SourceError(f"malformed object-info line {pkt!r:.100}")
        oid = match[1].decode("ascii")
        if oid not in wanted:
            raise SourceError(f"object-info reply names an object we did not ask for: {oid}")
        if match[2]:
            size = int(match[2])
            if size > _MAX_SIZE:
                raise SourceError(f"object-info reports an impossible size for {oid}")
            into[oid] = size


def _batches(oids: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(oids), BATCH):
        yield oids[start : start + BATCH]


def _query_stream(
    client: TraditionalGitClient, path: str, oids: Sequence[str]
) -> dict[str, int] | None:
    proto, _can_read, _stderr = client._connect(b"upload-pack", path, 2)
    with proto:
        if negotiate_protocol_version(proto) != 2:
            return None
        capabilities = _capabilities(proto.read_pkt_seq())
        if b"object-info" not in capabilities:
            proto.write_pkt_line(None)
            return None
        sizes: dict[str, int] = {}
        for batch in _batches(oids):
            proto.write(_request(batch, capabilities))
            _read_reply(proto.read_pkt_seq(), set(batch), sizes)
        proto.write_pkt_line(None)
        return sizes


def _query_http(
    client: AbstractHttpGitClient, path: str, oids: Sequence[str]
) -> dict[str, int] | None:
    url = client._get_url(path)
    _refs, capabilities, url, _symrefs, _peeled = client._discover_references(
        b"git-upload-pack", url, protocol_version=2, ref_prefix=[b"HEAD"]
    )
    offered = _capabilities(capabilities)
    if client.protocol_version != 2 or b"object-info" not in offered:
        return None
    sizes: dict[str, int] = {}
    for batch in _batches(oids):
        response, read = client._smart_request("git-upload-pack", url, _request(batch, offered))
        try:
            _read_reply(Protocol(read, _no_write).read_pkt_seq(), set(batch), sizes)
        finally:
            response.close()
    return sizes


def _no_write(_data: bytes) -> None:
    raise RuntimeError("object-info replies are read-only")
