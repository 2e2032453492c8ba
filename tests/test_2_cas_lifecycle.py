"""The store's lifecycle on a real disk: usage bookkeeping, LRU eviction that never removes an
open, claimed, pinned or partial-in-progress blob, reconciliation, and gc."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artifactfs.cas import GIT_SHA1, SHA256, ContentStore, Digest
from artifactfs.cas import reads as cas_reads
from artifactfs.cas.claims import FetchClaims
from artifactfs.cas.digests import digest_of
from artifactfs.cas.eviction import CachePolicy, evict
from artifactfs.cas.gc import collect
from artifactfs.cas.partial import BLOCK, PartialBlob
from artifactfs.cas.upkeep import _Upkeep
from artifactfs.cas.usage import UsageDB, UsageRecorder, reconcile


def blob(seed: int, size: int = 1000) -> bytes:
    return (b"%08d" % seed) * (size // 8)


def fill(store: ContentStore, count: int, size: int = 1000) -> list[Digest]:
    """``count`` blobs, published in order, each used a moment after the one before."""
    digests = []
    for seed in range(count):
        digests.append(store.add_bytes(GIT_SHA1, blob(seed, size)))
        assert store.usage is not None
        store.usage._published[digests[-1]] = (size, 1000.0 + seed)  # a distinct LRU time
    return digests


@pytest.fixture
def recorder(tmp_path: Path) -> UsageRecorder:
    return UsageRecorder(tmp_path / "cas")


@pytest.fixture
def store(tmp_path: Path, recorder: UsageRecorder) -> ContentStore:
    return ContentStore(tmp_path / "cas", recorder)


def test_publishes_and_opens_are_recorded_and_totalled(
    store: ContentStore, recorder: UsageRecorder
) -> None:
    digests = fill(store, 5)
    assert recorder.flush() == 5000
    db = recorder.database()
    assert [e.digest for e in db.lru(None, 100)] == digests  # least recently used first
    store.touched(digests[0])  # opened now: the most recently used
    recorder.flush()
    assert [e.digest for e in db.lru(None, 100)] == [*digests[1:], digests[0]]
    store.put_bytes(digests[1], blob(1))  # published again: one row, one size
    assert recorder.flush() == 5000
    ghost = digest_of(GIT_SHA1, b"never published")
    store.touched(ghost)  # an open of something without a row adds none
    assert recorder.flush() == 5000
    assert db.get(ghost) is None


def test_partials_count_their_present_bytes(store: ContentStore, recorder: UsageRecorder) -> None:
    content = os.urandom(2 * BLOCK)
    digest = Digest(SHA256, hashlib.sha256(content).hexdigest())
    recorder.partial(digest, BLOCK)
    assert recorder.flush() == BLOCK
    recorder.partial(digest, 2 * BLOCK)
    assert recorder.flush() == 2 * BLOCK
    partial = PartialBlob.open(store.root, digest, len(content))
    partial.write(0, content)
    store.adopt(digest, partial.detach_file())  # kept: the partial's row becomes the blob's
    assert recorder.flush() == 2 * BLOCK
    entry = recorder.database().get(digest)
    assert entry is not None and entry.size == 2 * BLOCK
    assert recorder.database().get(digest, partial=True) is None


def test_eviction_goes_in_lru_order_to_the_target(
    store: ContentStore, recorder: UsageRecorder
) -> None:
    digests = fill(store, 10)
    recorder.flush()
    report = evict(store.root, recorder.database(), 6500)
    assert report.removed == 4 and report.freed == 4000 and report.after == 6000
    assert [store.contains(d) for d in digests] == [False] * 4 + [True] * 6
    assert recorder.database().total() == 6000


def test_eviction_never_removes_what_is_open_claimed_or_pinned(
    store: ContentStore, recorder: UsageRecorder
) -> None:
    digests = fill(store, 6)
    recorder.flush()
    db = recorder.database()
    path = store.path_of(digests[0])
    fd = os.open(path, os.O_RDONLY)
    assert cas_reads.hold(fd, path)  # a reader has the oldest open
    claim = FetchClaims(store.root).try_claim(digests[1].hex)  # the next is being fetched
    assert claim is not None
    db.set_pins("repo", [""], [digests[2]])  # and the third pinned
    try:
        report = evict(store.root, db, 0)
        assert report.busy == 2
        assert [store.contains(d) for d in digests] == [True] * 3 + [False] * 3
        assert os.pread(fd, 8, 0) == b"%08d" % 0
    finally:
        os.close(fd)
        claim.release()
    assert evict(store.root, db, 0).removed == 2  # closed, fetched: evictable now
    assert [store.contains(d) for d in digests] == [False, False, True] + [False] * 3
    assert db.unpin("repo") == 1
    evict(store.root, db, 0)
    assert not store.contains(digests[2]) and db.total() == 0


def test_an_open_in_another_process_holds_the_blob(
    store: ContentStore, recorder: UsageRecorder
) -> None:
    (digest,) = fill(store, 1)
    recorder.flush()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys\n"
            "from pathlib import Path\n"
            "from artifactfs.cas import reads\n"
            "path = Path(sys.argv[1]); fd = os.open(path, os.O_RDONLY)\n"
            "assert reads.hold(fd, path); print('held', flush=True); sys.stdin.read()\n",
            str(store.path_of(digest)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert evict(store.root, recorder.database(), 0).busy == 1
        assert store.contains(digest)
    finally:
        holder.communicate(b"", timeout=30)
    assert evict(store.root, recorder.database(), 0).removed == 1


def test_a_reader_opening_an_evicted_blob_is_told(store: ContentStore) -> None:
    (digest,) = fill(store, 1)
    path = store.path_of(digest)
    fd = os.open(path, os.O_RDONLY)  # opened just before the evictor unlinked it
    try:
        os.unlink(path)
        assert not cas_reads.hold(fd, path)
    finally:
        os.close(fd)


def test_partials_in_progress_stay_and_idle_ones_go(
    store: ContentStore, recorder: UsageRecorder
) -> None:
    contents = [os.urandom(BLOCK + 10) for _ in range(2)]
    digests = [Digest(SHA256, hashlib.sha256(c).hexdigest()) for c in contents]
    partials = [
        PartialBlob.open(store.root, d, len(c)) for d, c in zip(digests, contents, strict=True)
    ]
    for partial, content in zip(partials, contents, strict=True):
        partial.write(0, content[:BLOCK])
        partial.flush()
    for digest in digests:
        recorder.partial(digest, BLOCK)
    recorder.flush()
    partials[1].close()  # its worker stopped: nobody fills it
    try:
        report = evict(store.root, recorder.database(), 0)
        assert report.busy == 1 and report.removed == 1
        assert partials[0].data_path.exists()
        assert not partials[1].data_path.exists() and not partials[1].map_path.exists()
    finally:
        partials[0].close()
    again = PartialBlob.open(store.root, digests[1], len(contents[1]))  # starts over, empty
    try:
        assert again.missing(0, 1) == [0, 1]
    finally:
        again.close()


def test_past_the_hard_limit_the_publisher_evicts_before_returning(
    store: ContentStore, recorder: UsageRecorder
) -> None:
    policy = CachePolicy(10_000)
    upkeep = _Upkeep(store.root, policy, recorder)
    recorder.hard_limit = policy.hard_limit
    recorder.evict_now = upkeep.evict_now
    on_disk = []
    for seed in range(60):
        store.add_bytes(GIT_SHA1, blob(seed))
        on_disk.append(sum(f.stat().st_size for f in store.root.glob("git-sha1/*/*")))
    assert max(on_disk) <= policy.hard_limit, on_disk
    assert store.contains(digest_of(GIT_SHA1, blob(59)))  # the newest stays


def test_reconcile_repairs_missing_and_stale_rows(
    store: ContentStore, recorder: UsageRecorder, tmp_path: Path
) -> None:
    digests = fill(store, 3)
    recorder.flush()
    db = recorder.database()
    os.unlink(store.path_of(digests[0]))  # evicted by a process that crashed before its flush
    unknown = ContentStore(store.root).add_bytes(GIT_SHA1, b"published by an older version")
    assert reconcile(store.root, db) == 3
    assert db.get(digests[0]) is None
    found = db.get(unknown)
    assert found is not None and found.size == len(b"published by an older version")
    assert db.total() == 2000 + found.size
    assert db.meta("reconciled") is not None


def test_gc_removes_exactly_what_nothing_references(
    store: ContentStore, recorder: UsageRecorder
) -> None:
    digests = fill(store, 6)
    recorder.flush()
    keep = {digests[0], digests[1]}
    path = store.path_of(digests[2])
    fd = os.open(path, os.O_RDONLY)
    assert cas_reads.hold(fd, path)  # unreferenced but open: stays
    try:
        # everything was published after this collection "started": all of it stays
        report = collect(store.root, lambda d: d in keep, started=time.time() - 60)
        assert report.removed == 0 and report.kept_in_use == 4
        # a collection that started later than every publish
        report = collect(store.root, lambda d: d in keep, started=time.time() + 60)
    finally:
        os.close(fd)
    assert [store.contains(d) for d in digests] == [True, True, True, False, False, False]
    assert report.kept_referenced == 2 and report.removed == 3 and report.freed == 3000
    db = UsageDB(store.root)
    try:
        assert db.get(digests[3]) is None and db.get(digests[0]) is not None
    finally:
        db.close()


def test_gc_dry_run_removes_nothing(store: ContentStore, recorder: UsageRecorder) -> None:
    digests = fill(store, 3)
    recorder.flush()
    report = collect(store.root, lambda d: False, dry_run=True, started=time.time() + 10)
    assert report.removed == 3 and all(store.contains(d) for d in digests)


def test_gc_removes_private_partials_of_dead_processes(store: ContentStore) -> None:
    private = store.root / "partial" / "private"
    private.mkdir(parents=True)
    stale = private / ("ab" * 32 + "-999999")
    stale.write_bytes(b"x")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    digest = Digest(SHA256, "cd" * 32)
    holder = PartialBlob.open(store.root, digest, 10)  # holds the shared one
    mine = PartialBlob.open(store.root, digest, 10)  # so this one is private, and locked
    try:
        assert not mine.persistent
        os.utime(mine.data_path, (old, old))
        collect(store.root, lambda d: True, started=time.time())
        assert not stale.exists() and mine.data_path.exists()
    finally:
        mine.discard()
        holder.close()
