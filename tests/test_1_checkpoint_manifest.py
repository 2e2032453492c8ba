"""A checkpoint's manifest comes back from a shared bucket: it round-trips exactly, is the
same bytes for the same state, and anything that could write outside the workspace or is
not ours is refused whole (``BadManifest``)."""

from __future__ import annotations

import json

import pytest

from artifactfs.overlay.checkpoints.manifest import (
    BadManifest,
    FileEntry,
    Manifest,
    Pointer,
    parse,
    parse_pointer,
)

DIGEST = "ab" * 32
COMMIT = "cd" * 20


def sample() -> Manifest:
    entry = FileEntry(DIGEST, 5, 0o644, 123, {b"user.x": b"\x00\xff"})
    return Manifest(
        commit=COMMIT,
        object_format="sha1",
        source="git://example/repo.git",
        ref="main",
        user_version=2,
        columns=["ino", "parent", "name", "target", "content"],
        nodes=[[5, 1, b"a\xffb", None, "upper"], [2**62, 1, b"link", b"../x", None]],
        xattrs=[(7, b"user.y", b"v")],
        meta={"next_ino": str(2**62 + 1)},
        upper={5: entry},
        git_path="/home/a/repos/work/git",
        git_dirs={"refs": 0o755, "refs/heads": 0o755},
        git_files={"index": entry, "refs/heads/main": entry},
        git_links={"hooks-link": "/elsewhere"},
    )


def test_round_trip_is_exact_and_stable() -> None:
    data = sample().encode()
    assert parse(data) == sample()
    assert parse(data).encode() == data
    assert sample().digests() == {DIGEST}


def test_pointer_round_trip() -> None:
    pointer = Pointer(DIGEST, COMMIT, "2026-01-01T00:00:00+00:00")
    assert parse_pointer(pointer.encode()) == pointer
    with pytest.raises(BadManifest):
        parse_pointer(b'{"manifest": "md5:00"}')


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d["git"]["files"].update({"../escape": d["git"]["files"]["index"]}),
        lambda d: d["git"]["files"].update({"/abs": d["git"]["files"]["index"]}),
        lambda d: d["git"]["files"].update({"hooks-link/x": d["git"]["files"]["index"]}),
        lambda d: d["git"]["links"].update({"hooks-link/y": "z"}),
        lambda d: d["git"]["dirs"].update({"hooks-link": 0o755}),
        lambda d: d["git"]["files"]["index"].update({"sha256": "00"}),
        lambda d: d["overlay"]["upper"].update({"-1": d["git"]["files"]["index"]}),
        lambda d: d["overlay"]["nodes"][0].__setitem__(2, "Li4="),  # b".."
        lambda d: d["overlay"]["nodes"][0].__setitem__(0, "5"),
        lambda d: d.update({"commit": "HEAD"}),
        lambda d: d.update({"format": 2}),
    ],
)
def test_damaged_manifests_are_refused(damage: object) -> None:
    document = json.loads(sample().encode())
    damage(document)  # type: ignore[operator]
    with pytest.raises(BadManifest):
        parse(json.dumps(document).encode())


def test_not_json_is_refused() -> None:
    with pytest.raises(BadManifest):
        parse(b"\xff{")
