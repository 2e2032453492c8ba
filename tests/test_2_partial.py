"""Partial blobs: block maps that survive restarts, and only ever claim durable bytes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from artifactfs.cas import SHA256, ContentStore, Digest, DigestMismatch
from artifactfs.cas.partial import BLOCK, PartialBlob, blocks_in

CONTENT = os.urandom(3 * BLOCK + 1000)
DIGEST = Digest(SHA256, hashlib.sha256(CONTENT).hexdigest())


def test_blocks_become_present_only_when_whole(tmp_path: Path) -> None:
    blob = PartialBlob.open(tmp_path, DIGEST, len(CONTENT))
    try:
        assert blob.missing(0, 3) == [0, 1, 2, 3]
        blob.write(BLOCK, CONTENT[BLOCK : BLOCK + 100])  # a piece of block 1: not present
        assert blob.missing(0, 3) == [0, 1, 2, 3]
        blob.write(BLOCK, CONTENT[BLOCK : 3 * BLOCK])
        assert blob.missing(0, 3) == [0, 3]
        blob.write(3 * BLOCK, CONTENT[3 * BLOCK :])  # the short last block, up to the end
        assert blob.missing(0, 3) == [0]
        assert blob.present_bytes() == 2 * BLOCK + 1000
        assert blob.read(BLOCK + 5, 10) == CONTENT[BLOCK + 5 : BLOCK + 15]
        assert not blob.complete
        with pytest.raises(ValueError):
            blob.write(len(CONTENT) - 10, b"x" * 20)
    finally:
        blob.close()


def test_the_map_survives_a_restart_but_claims_only_flushed_blocks(tmp_path: Path) -> None:
    blob = PartialBlob.open(tmp_path, DIGEST, len(CONTENT))
    blob.write(0, CONTENT[:BLOCK])
    blob.flush()
    blob.write(BLOCK, CONTENT[BLOCK : 2 * BLOCK])  # not flushed: as if we crashed now
    os.close(blob._fd)  # no close(): close() would flush
    again = PartialBlob.open(tmp_path, DIGEST, len(CONTENT))
    try:
        assert again.missing(0, 3) == [1, 2, 3]
        assert again.read(0, BLOCK) == CONTENT[:BLOCK]
    finally:
        again.close()
    size_changed = PartialBlob.open(tmp_path, DIGEST, len(CONTENT) + 1)  # not the same blob
    try:
        assert size_changed.missing(0, blocks_in(len(CONTENT) + 1) - 1) == [0, 1, 2, 3]
    finally:
        size_changed.close()


_HOLDER = """
import sys
from pathlib import Path
from artifactfs.cas import Digest, SHA256
from artifactfs.cas.partial import PartialBlob
blob = PartialBlob.open(Path(sys.argv[1]), Digest(SHA256, sys.argv[2]), int(sys.argv[3]))
print(blob.persistent, flush=True)
sys.stdin.read()
"""


def test_a_second_process_fills_a_private_copy(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path), DIGEST.hex, str(len(CONTENT))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "True\n"
            mine = PartialBlob.open(tmp_path, DIGEST, len(CONTENT))
            assert not mine.persistent
            assert mine.data_path.parent.name == "private"
            mine.discard()
        finally:
            holder.kill()


def test_complete_content_is_adopted_only_if_it_matches(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path)
    blob = PartialBlob.open(tmp_path, DIGEST, len(CONTENT))
    blob.write(0, CONTENT)
    assert blob.complete
    cas.adopt(DIGEST, blob.detach_file())
    assert cas.path_of(DIGEST).read_bytes() == CONTENT
    assert not (tmp_path / "partial" / "sha256" / DIGEST.hex[:2] / f"{DIGEST.hex}.blocks").exists()

    bad = Digest(SHA256, "0" * 64)
    blob = PartialBlob.open(tmp_path, bad, len(CONTENT))
    blob.write(0, CONTENT)
    path = blob.detach_file()
    with pytest.raises(DigestMismatch):
        cas.adopt(bad, path)
    assert not path.exists() and not cas.contains(bad)
