"""A promisor remote served from the local CAS, so git's lazy fetches in a writable mount's
git directory take what the mount already fetched, and what they fetch lands in the CAS.

git asks its promisor remotes for missing objects in order, the ``extensions.partialclone``
remote (``origin``) last; the git directory lists this one (``artifactfs``) before it, as an
``ext::`` remote: git runs ``artifactfs-cas-remote`` in the git directory (a script that
starts our interpreter on ``main``) and speaks upload-pack (protocol v0) with it over its stdin
and stdout. Asked for blobs, it sends a pack of them: those in the CAS (hashed to their id as
they are read and sent), and those that are not, fetched from the origin first
(``GitRemote.fetch_blobs``: verified, published to the CAS, so a later read through the mount
fetches nothing). If any cannot be had (the origin down, a private origin whose token this
process was not given), it answers with an error and git asks the next promisor remote,
``origin``, with git's own credentials: never worse than without it.

This is what makes ``git commit`` cheap after a ``grep -r`` (git fetches every blob of the
index it lacks before writing trees), and a ``grep -r`` cheap after a ``git commit``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ...cas import ContentStore, Digest
from ...cas.digests import Algorithm, git_blob_algorithm
from ...errors import SourceError, UserError
from ..base import SourceSettings
from ..counters import FetchCounters
from ..credentials import CredentialProvider
from .remote import GitRemote
from .spec import parse_git_source

SETTINGS_FILE = "artifactfs-cas-remote.json"
"""Ours, in the git directory: what the remote needs (CAS, origin, object format)."""
_CAPABILITIES = (
    b"side-band-64k shallow filter no-progress allow-tip-sha1-in-want"
    b" allow-reachable-sha1-in-want agent=artifactfs"
)
_MAX_DATA = 65515  # side-band-64k: 65520 bytes per packet, less the band byte and the length


class ProtocolError(Exception):
    pass


def _read_pkt(stream: BinaryIO, eof: bytes | None = b"") -> bytes | None:
    """One pkt-line's payload; None for a flush packet; ``eof`` if the client hung up before
    it (``b""``: that is an error)."""
    head = stream.read(4)
    if not head and eof:
        return eof
    if len(head) != 4:
        raise ProtocolError("the client hung up")
    length = int(head, 16)
    if length == 0:
        return None
    if length < 4:
        raise ProtocolError(f"unexpected packet {head!r}")
    data = stream.read(length - 4)
    if len(data) != length - 4:
        raise ProtocolError("the client hung up")
    return data


def _pkt(data: bytes) -> bytes:
    return b"%04x" % (len(data) + 4) + data


_HUNG_UP = b"\0hung up"


def _request(stream: BinaryIO, out: BinaryIO) -> list[str]:
    """The object ids the client wants (up to its flush), then its ``have``s up to ``done``.
    A client that wants nothing may hang up at once."""
    wants: list[str] = []
    while (line := _read_pkt(stream, eof=_HUNG_UP)) is not None:
        if line == _HUNG_UP:
            return []
        if line.startswith(b"want "):
            wants.append(line[5:].split(b" ", 1)[0].split(b"\0", 1)[0].strip().decode("ascii"))
    if not wants:
        return wants
    while True:  # haves (a noop negotiator, as git's lazy fetches use, sends none)
        line = _read_pkt(stream)
        if line is None:  # the end of a round of haves: nothing in common
            out.write(_pkt(b"NAK\n"))
            out.flush()
        elif line.strip() == b"done":
            return wants


def _sideband(band: int, data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), _MAX_DATA):
        yield _pkt(bytes([band]) + data[start : start + _MAX_DATA])


def serve(settings_path: Path, stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Answer one upload-pack request on ``stdin``/``stdout``; the exit status."""
    settings = json.loads(settings_path.read_text("utf-8"))
    object_format = settings["object_format"]
    # one ref (git refuses to fetch by id from a remote with none): the commit the git
    # directory was made for, which the client has
    head = settings["commit"].encode("ascii")
    stdout.write(_pkt(head + b" HEAD\0" + _CAPABILITIES + b"\n"))
    stdout.write(b"0000")
    stdout.flush()
    wants = _request(stdin, stdout)
    if not wants:
        return 0
    cas = ContentStore(Path(settings["cas"]))
    algorithm = git_blob_algorithm(object_format)
    missing = [oid for oid in wants if cas.hash_published(Digest(algorithm, oid)) != oid]
    if missing:
        spec = parse_git_source(settings["origin"])
        if spec is None:
            return _refuse(stdout, "artifactfs: no origin to fetch from")
        remote = GitRemote(
            spec,
            SourceSettings(
                ref=None,
                cas_dir=Path(settings["cas"]),
                snapshots_dir=Path(settings["snapshots"]),
                temp_dir=Path(settings["temp"]),
                credentials=CredentialProvider(),
                counters=FetchCounters(),
                io_timeout=float(settings.get("io_timeout", 60.0)),
            ),
        )
        remote.object_format = object_format
        try:
            got = remote.fetch_blobs(dict.fromkeys(missing))
        except SourceError as exc:
            return _refuse(stdout, f"artifactfs: not in the local store, and the origin: {exc}")
        if set(missing) - got:
            return _refuse(stdout, "artifactfs: the origin did not send every blob asked for")
    stdout.write(_pkt(b"NAK\n"))
    try:
        _send_pack(cas, algorithm, object_format, wants, stdout)
    except _Damaged as exc:  # bytes went out already: git drops the pack and asks origin
        stdout.write(_pkt(b"\x03artifactfs: " + str(exc).encode() + b"\n"))
        stdout.flush()
        return 1
    stdout.write(b"0000")
    stdout.flush()
    return 0


class _Damaged(Exception):
    pass


def _send_pack(
    cas: ContentStore, algorithm: Algorithm, object_format: str, oids: list[str], out: BinaryIO
) -> None:
    """A pack of the blobs ``oids``, streamed from the CAS (not deltified, one blob in memory
    at a time at most a chunk), on side band 1; each blob hashed to its id as it goes."""
    new_hash = hashlib.sha1 if object_format == "sha1" else hashlib.sha256
    trailer = new_hash()

    def send(data: bytes) -> None:
        trailer.update(data)
        for packet in _sideband(1, data):
            out.write(packet)

    send(b"PACK" + struct.pack(">II", 2, len(oids)))
    for oid in oids:
        with open(cas.path_of(Digest(algorithm, oid)), "rb") as blob:
            size = os.fstat(blob.fileno()).st_size
            send(_object_header(_BLOB, size))
            check = new_hash(b"blob %d\0" % size)
            compressor = zlib.compressobj(1)
            while chunk := blob.read(_CHUNK):
                check.update(chunk)
                if packed := compressor.compress(chunk):
                    send(packed)
            send(compressor.flush())
        if check.hexdigest() != oid:
            raise _Damaged(f"blob {oid} in the local store is damaged")
    send(trailer.digest())


_BLOB = 3
_CHUNK = 1 << 20


def _object_header(kind: int, size: int) -> bytes:
    """A pack entry's type and size: 3 bits of type and 4 of size, then 7 bits a byte."""
    byte = (kind << 4) | (size & 0x0F)
    size >>= 4
    header = bytearray()
    while size:
        header.append(byte | 0x80)
        byte = size & 0x7F
        size >>= 7
    header.append(byte)
    return bytes(header)


def _refuse(stdout: BinaryIO, message: str) -> int:
    stdout.write(_pkt(b"ERR " + message.encode("utf-8", "replace")[:900] + b"\n"))
    stdout.flush()
    return 1


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m artifactfs.sources.git.cas_remote SETTINGS", file=sys.stderr)
        return 2
    try:
        return serve(Path(argv[0]), sys.stdin.buffer, sys.stdout.buffer)
    except (ProtocolError, OSError, ValueError, KeyError, SourceError, UserError) as exc:
        print(f"artifactfs: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main(sys.argv[1:]))
