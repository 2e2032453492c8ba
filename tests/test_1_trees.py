"""Validation of untrusted tree data, without a server."""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import zlib

import pytest

from artifactfs.errors import SourceError
from artifactfs.snapshot.entries import (
    Kind,
    RefusedEntry,
    check_name,
    check_symlink_target,
    kind_of_git_mode,
)
from artifactfs.sources.git.packs import iter_objects
from artifactfs.sources.git.trees import index_trees

OID = "ab" * 20


def tree(*entries: tuple[str, bytes, str]) -> bytes:
    return b"".join(m.encode() + b" " + n + b"\0" + bytes.fromhex(o) for m, n, o in entries)


@pytest.mark.parametrize(
    "name", [b"", b".", b"..", b"a/b", b"/", b"a\0b", b"x" * 256, b".git", b".GiT"]
)
def test_unsafe_names(name: bytes) -> None:
    with pytest.raises(RefusedEntry):
        check_name(name)


@pytest.mark.parametrize("name", [b"a", b"...", b".gitignore", b".github", b"x" * 255, b"\xff"])
def test_safe_names(name: bytes) -> None:
    check_name(name)


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        (0o40000, Kind.DIRECTORY),
        (0o100644, Kind.FILE),
        (0o100664, Kind.FILE),
        (0o100755, Kind.EXECUTABLE),
        (0o120000, Kind.SYMLINK),
        (0o160000, Kind.SUBMODULE),
    ],
)
def test_git_modes(mode: int, kind: Kind) -> None:
    assert kind_of_git_mode(mode) is kind


@pytest.mark.parametrize("mode", [0o170000, 0o20000, 0o60000, 0])
def test_unknown_modes(mode: int) -> None:
    with pytest.raises(RefusedEntry):
        kind_of_git_mode(mode)


@pytest.mark.parametrize("target", [b"", b"a\0b", b"x" * 4096])
def test_bad_symlink_targets(target: bytes) -> None:
    with pytest.raises(RefusedEntry):
        check_symlink_target(target)


def test_refused_entries_are_logged_and_left_out(caplog: pytest.LogCaptureFixture) -> None:
    root, sub = "11" * 20, "22" * 20
    raw = {
        root: tree(
            ("100644", b"ok", OID),
            ("100644", b"..", OID),
            ("40000", b"sub", sub),
            ("100644", b"ok", OID),
        ),
        sub: tree(("100755", b"run", OID), ("160000", b"module", OID)),
    }
    with caplog.at_level(logging.WARNING):
        trees = index_trees(root, raw, 20)
    assert [(c.name, c.kind) for c in trees.listings[root]] == [
        (b"ok", Kind.FILE),
        (b"sub", Kind.DIRECTORY),
    ]
    assert [c.path for c in trees.listings[sub]] == [b"sub/run", b"sub/module"]
    assert "refused tree entry ..: forbidden name" in caplog.text
    assert "refused tree entry ok: duplicate name in tree" in caplog.text


def test_missing_and_malformed_trees() -> None:
    root = "11" * 20
    with pytest.raises(SourceError, match="did not send tree"):
        index_trees(root, {}, 20)
    with pytest.raises(SourceError, match="malformed tree"):
        index_trees(root, {root: b"100644 name-without-terminator"}, 20)


def test_tree_bombs_are_refused_without_expanding_them() -> None:
    """Ten levels of ten references to the same subtree: 10^10 entries if expanded."""
    ids = [f"{i:02x}" * 20 for i in range(11)]
    raw = {ids[10]: tree(("100644", b"leaf", OID))}
    for level in range(9, -1, -1):
        raw[ids[level]] = tree(*[("40000", b"d%d" % n, ids[level + 1]) for n in range(10)])
    with pytest.raises(SourceError, match="expands to"):
        index_trees(ids[0], raw, 20, max_entries=1_000_000)


def test_depth_limit() -> None:
    ids = [f"{i:04x}" * 10 for i in range(30)]
    raw = {ids[i]: tree(("40000", b"d", ids[i + 1])) for i in range(29)}
    raw[ids[29]] = b""
    index_trees(ids[0], raw, 20, max_depth=29)
    with pytest.raises(SourceError, match="nests deeper"):
        index_trees(ids[0], raw, 20, max_depth=20)


def _pack(*objects: tuple[int, bytes]) -> bytes:
    """A pack of ``(type, data)`` objects; an ofs-delta (6) is against the object before it."""

    def header(kind: int, size: int) -> bytes:
        byte, size, out = (kind << 4) | (size & 0x0F), size >> 4, bytearray()
        while size:
            out.append(byte | 0x80)
            byte, size = size & 0x7F, size >> 7
        return bytes(out) + bytes([byte])

    body = b"PACK" + struct.pack(">II", 2, len(objects))
    previous = 0
    for kind, data in objects:
        at = len(body)
        body += header(kind, len(data))
        if kind == 6:
            assert at - previous < 128
            body += bytes([at - previous])
        body += zlib.compress(data)
        previous = at
    return body + hashlib.sha1(body).digest()


BASE = b"a base blob of some length\n"


@pytest.mark.parametrize(
    "pack",
    [
        # a delta that copies from beyond its base (dulwich: ApplyDeltaError)
        _pack((3, BASE), (6, bytes([len(BASE), 10, 0x91, 200, 10]))),
        # a delta whose base size is not its base's
        _pack((3, BASE), (6, bytes([5, 1, 1, 0x41]))),
        # an object of no known type
        _pack((5, b"what")),
        # a delta with no base before it
        _pack((6, bytes([len(BASE), 1, 1, 0x41]))),
    ],
)
def test_a_malformed_pack_is_one_source_error(pack: bytes) -> None:
    with pytest.raises(SourceError, match="malformed pack"):
        list(iter_objects(io.BytesIO(pack), "sha1"))
