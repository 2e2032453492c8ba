"""The CAS contract: verified, atomic, idempotent, validated names, safe with many writers."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifactfs.cas import (
    GIT_SHA1,
    GIT_SHA256,
    SHA256,
    Algorithm,
    ContentStore,
    Digest,
    DigestMismatch,
    InvalidDigest,
    SizeMismatch,
)
from artifactfs.cas.digests import digest_of
from tests.helpers.waiting import wait_for

ALGORITHMS = [GIT_SHA1, GIT_SHA256, SHA256]


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "cas")


def leftovers(store: ContentStore) -> list[Path]:
    return [p for p in store.root.rglob(".tmp-*")]


def test_git_blob_digests_match_git(tmp_path: Path) -> None:
    for content in (b"", b"hello\n", os.urandom(100_000)):
        (tmp_path / "f").write_bytes(content)
        expected = subprocess.run(
            ["git", "hash-object", str(tmp_path / "f")], capture_output=True, check=True, text=True
        ).stdout.strip()
        assert digest_of(GIT_SHA1, content).hex == expected
    assert digest_of(SHA256, b"abc").hex == hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.name)
def test_put_publishes_read_only_content_at_its_digest(
    algorithm: Algorithm, store: ContentStore
) -> None:
    data = os.urandom(10_000)
    digest = digest_of(algorithm, data)
    path = store.put_bytes(digest, data)
    assert path == store.root / algorithm.name / digest.hex[:2] / digest.hex
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.contains(digest)
    assert store.size_of(digest) == len(data)
    fd = store.open_fd(digest)
    try:
        assert os.pread(fd, 10, 0) == data[:10]
    finally:
        os.close(fd)
    assert leftovers(store) == []


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.name)
def test_mismatched_content_is_never_published(algorithm: Algorithm, store: ContentStore) -> None:
    digest = digest_of(algorithm, b"the real content")
    with pytest.raises(DigestMismatch) as raised:
        store.put_bytes(digest, b"something else!!")
    assert raised.value.expected == digest
    assert not store.contains(digest)
    assert store.size_of(digest) is None
    assert leftovers(store) == []
    with pytest.raises(FileNotFoundError):
        store.open_fd(digest)


def test_short_or_long_streams_are_never_published(store: ContentStore) -> None:
    data = b"0123456789"
    digest = digest_of(GIT_SHA1, data)
    with pytest.raises(SizeMismatch):
        store.put(digest, [data[:5]], size=len(data))
    with pytest.raises(SizeMismatch):
        store.put(digest, [data, b"x"], size=len(data))
    assert not store.contains(digest)
    assert leftovers(store) == []


def test_a_failing_producer_leaves_nothing(store: ContentStore) -> None:
    digest = digest_of(SHA256, b"abcdef")

    def chunks() -> Iterator[bytes]:
        yield b"abc"
        raise ConnectionResetError("the origin went away")

    with pytest.raises(ConnectionResetError):
        store.put(digest, chunks())
    assert not store.contains(digest)
    assert leftovers(store) == []


def test_put_is_idempotent_and_heals(store: ContentStore) -> None:
    data = b"same bytes"
    digest = store.add_bytes(GIT_SHA1, data)
    assert store.add_bytes(GIT_SHA1, data) == digest
    store.put_bytes(digest, data)
    assert store.path_of(digest).read_bytes() == data
    path = store.path_of(digest)
    path.chmod(0o644)
    path.write_bytes(b"same bytez")  # damaged on disk
    assert store.hash_published(digest) != digest.hex
    store.put_bytes(digest, data)  # a re-fetch replaces it
    assert store.path_of(digest).read_bytes() == data
    assert store.hash_published(digest) == digest.hex
    assert leftovers(store) == []


def test_quarantine_keeps_a_damaged_blob_aside(store: ContentStore) -> None:
    digest = store.add_bytes(GIT_SHA1, b"content")
    assert store.quarantined() == 0
    kept = store.quarantine(digest)
    assert kept is not None and kept.read_bytes() == b"content"
    assert kept.parent == store.root / "quarantine" / "git-sha1"
    assert not store.contains(digest)
    assert store.quarantine(digest) is None  # gone already
    assert store.quarantined() == 1


@pytest.mark.parametrize(
    ("algorithm", "text"),
    [
        ("git-sha1", "../../../../etc/passwd"),
        ("git-sha1", "A" * 40),
        ("git-sha1", "0" * 39),
        ("git-sha1", "0" * 41),
        ("git-sha1", "0" * 38 + "/x"),
        ("git-sha1", ""),
        ("sha256", "0" * 40),
        ("../cas", "0" * 40),
        ("md5", "0" * 32),
    ],
)
def test_names_are_validated_before_any_path_is_built(algorithm: str, text: str) -> None:
    with pytest.raises(InvalidDigest):
        Digest.parse(algorithm, text)


def _fill(root: str, seed: int, contents: list[bytes]) -> int:
    store = ContentStore(Path(root))
    for index in range(len(contents)):
        data = contents[(index + seed) % len(contents)]
        store.add_bytes(GIT_SHA1, data)
    return os.getpid()


def test_many_processes_filling_the_store_at_once(store: ContentStore) -> None:
    contents = [os.urandom(20_000 + i * 1000) for i in range(24)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(6) as pool:
        pids = pool.starmap(_fill, [(str(store.root), seed, contents) for seed in range(12)])
    assert len(set(pids)) > 1
    for data in contents:
        digest = digest_of(GIT_SHA1, data)
        assert store.path_of(digest).read_bytes() == data
    published = [p for p in store.root.rglob("*") if p.is_file()]
    assert len(published) == len(contents)
    assert leftovers(store) == []


_SLOW_WRITER = """
import sys, time
from pathlib import Path
from artifactfs.cas import ContentStore, Digest, SHA256
store = ContentStore(Path(sys.argv[1]))
def chunks():
    for _ in range(1000):
        yield b"x" * 65536
        time.sleep(0.01)
store.put(Digest(SHA256, sys.argv[2]), chunks())
"""


def test_a_writer_killed_mid_blob_leaves_only_a_temporary(store: ContentStore) -> None:
    hasher = hashlib.sha256()
    for _ in range(1000):
        hasher.update(b"x" * 65536)
    digest = Digest(SHA256, hasher.hexdigest())
    writer = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(store.root), digest.hex])
    try:
        wait_for(lambda: any(p.stat().st_size > 0 for p in leftovers(store)), 20, "a write")
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert not store.contains(digest)
    assert store.size_of(digest) is None
    assert len(leftovers(store)) == 1
    assert store.sweep_temporaries(older_than_seconds=3600) == 0  # too young to be swept
    assert store.sweep_temporaries(older_than_seconds=0) == 1
    assert leftovers(store) == []


_CLAIMER = """
import sys, time
from pathlib import Path
from artifactfs.cas.claims import FetchClaims
claim = FetchClaims(Path(sys.argv[1])).try_claim(sys.argv[2])
print("claimed" if claim else "busy", flush=True)
sys.stdin.read()  # hold it until told (or killed)
if claim:
    claim.release()
"""


def test_one_process_at_a_time_may_fetch_a_blob(tmp_path: Path) -> None:
    from artifactfs.cas.claims import FetchClaims

    claims = FetchClaims(tmp_path)
    oid = "ab" * 20
    with subprocess.Popen(
        [sys.executable, "-c", _CLAIMER, str(tmp_path), oid],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "claimed\n"
            assert claims.try_claim(oid) is None  # another process is fetching it
            mine = claims.try_claim("cd" * 20)
            assert mine is not None  # other blobs are free
            mine.release()
            holder.send_signal(signal.SIGKILL)  # a crashed fetcher's claim dies with it
            holder.wait(10)
            assert claims.wait(oid, timeout=10)
            again = claims.try_claim(oid)
            assert again is not None
            again.release()
            assert list((tmp_path / ".claims").iterdir()) == []  # released claims leave nothing
        finally:
            if holder.poll() is None:
                holder.kill()
    with pytest.raises(ValueError):
        claims.try_claim("../../etc/passwd")


def blobs(count: int) -> list[bytes]:
    return [b"blob number %d\n" % n * (n + 1) for n in range(count)]


def test_a_publisher_publishes_whole_groups_and_the_rest_at_the_end(
    store: ContentStore,
) -> None:
    contents = blobs(130)
    wanted = {digest_of(GIT_SHA1, data).hex for data in contents}
    published: list[list[Digest]] = []
    with store.publisher(group_blobs=64) as publisher:
        for data in contents:
            published.append(publisher.add_if(GIT_SHA1, data, wanted))
            # what was announced is in place, what was not is not yet
            assert all(store.contains(digest) for digest in published[-1])
        assert store.contains(digest_of(GIT_SHA1, contents[127]))
        assert not store.contains(digest_of(GIT_SHA1, contents[128]))
        published.append(publisher.publish())
    assert [len(group) for group in published if group] == [64, 64, 2]
    for data in contents:
        path = store.path_of(digest_of(GIT_SHA1, data))
        assert path.read_bytes() == data
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert leftovers(store) == []


def test_a_publisher_keeps_only_what_was_asked_for(store: ContentStore) -> None:
    wanted, unwanted = blobs(2)
    with store.publisher() as publisher:
        accept = {digest_of(GIT_SHA1, wanted).hex}
        assert publisher.add_if(GIT_SHA1, unwanted, accept) == []
        assert publisher.add_if(GIT_SHA1, wanted, accept) == []
        assert publisher.publish() == [digest_of(GIT_SHA1, wanted)]  # a group of one
    assert not store.contains(digest_of(GIT_SHA1, unwanted))
    assert store.contains(digest_of(GIT_SHA1, wanted)) and leftovers(store) == []


def test_a_publisher_left_by_an_error_removes_its_pending_blobs(store: ContentStore) -> None:
    contents = blobs(70)
    wanted = {digest_of(GIT_SHA1, data).hex for data in contents}
    with pytest.raises(RuntimeError), store.publisher(group_blobs=64) as publisher:
        for data in contents:
            publisher.add_if(GIT_SHA1, data, wanted)
        raise RuntimeError("the pack was cut off")
    assert all(store.contains(digest_of(GIT_SHA1, data)) for data in contents[:64])
    assert not any(store.contains(digest_of(GIT_SHA1, data)) for data in contents[64:])
    assert leftovers(store) == []


def test_a_publisher_may_publish_what_is_already_there(store: ContentStore) -> None:
    data = blobs(1)[0]
    digest = store.add_bytes(GIT_SHA1, data)
    with store.publisher() as publisher:
        publisher.add_if(GIT_SHA1, data, {digest.hex})
        assert publisher.publish() == [digest]
    assert store.path_of(digest).read_bytes() == data and leftovers(store) == []
