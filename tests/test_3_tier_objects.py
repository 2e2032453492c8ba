"""The shared tier's objects against a real S3 API server (moto, over HTTP) and a directory:
create-only puts, compare-and-swap, ranges, bounded waits, and the upload ledger."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifactfs.cas import SHA256, ContentStore
from artifactfs.cas.digests import digest_of
from artifactfs.cas.usage import UsageRecorder
from artifactfs.settings import check_endpoint, check_url
from artifactfs.tier import leases
from artifactfs.tier.keys import blob_key, check_checkpoint_name, snapshot_key
from artifactfs.tier.ledger import Ledger
from artifactfs.tier.location import TierLocation
from artifactfs.tier.objects import (
    ObjectStore,
    PreconditionFailed,
    TierError,
    open_store,
)
from artifactfs.tier.read_through import TierReads
from artifactfs.tier.uploads import push
from tests.helpers.s3 import S3Server, running_s3
from tests.helpers.servers import GitProxy

BUCKET = "fleet"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_s3(tmp_path_factory.mktemp("s3") / "moto.log") as server:
        server.make_bucket(BUCKET)
        yield server


def _s3_location(
    s3: S3Server, prefix: str, port: int | None = None, timeout: float = 5.0
) -> TierLocation:
    endpoint = f"http://127.0.0.1:{port or s3.port}"
    return TierLocation(
        url=f"s3://{BUCKET}/{prefix}", endpoint=endpoint, timeout=timeout, environ=s3.env()
    )


@pytest.fixture(params=["s3", "directory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "directory":
        return open_store(TierLocation(url=f"file://{tmp_path / 'shared'}"))
    s3: S3Server = request.getfixturevalue("s3")
    return open_store(_s3_location(s3, f"t-{os.urandom(4).hex()}"))


def test_create_only_put_never_clobbers(store: ObjectStore) -> None:
    assert store.head("a/b") is None
    assert store.get("a/b") is None
    assert store.put_new("a/b", b"first") is True
    assert store.put_new("a/b", b"second") is False
    data, _ = store.get("a/b") or (b"", "")
    assert data == b"first"
    info = store.head("a/b")
    assert info is not None and info.size == 5


def test_racing_create_only_puts_leave_one_winner(store: ObjectStore) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(6)

    def race(index: int) -> None:
        barrier.wait()
        results.append(store.put_new("race", bytes([index]) * 1000))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == [False] * 5 + [True]
    data, _ = store.get("race") or (b"", "")
    assert len(data) == 1000 and len(set(data)) == 1


def test_compare_and_swap_refuses_a_stale_etag(store: ObjectStore) -> None:
    first = store.put_if("pointer", b"v1", None)
    with pytest.raises(PreconditionFailed):
        store.put_if("pointer", b"again", None)  # it exists now
    second = store.put_if("pointer", b"v2", first)
    assert second != first
    with pytest.raises(PreconditionFailed):
        store.put_if("pointer", b"v3", first)  # someone moved it since
    assert store.get("pointer") == (b"v2", second)


def test_ranges_and_streams(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(9 << 20)
    source = tmp_path / "big"
    source.write_bytes(data)
    assert store.put_new("big", source) is True
    assert store.get_range("big", 5 << 20, 1 << 20) == data[5 << 20 : 6 << 20]
    with open(tmp_path / "copy", "wb") as out:
        assert store.download("big", out) == len(data)
    assert (tmp_path / "copy").read_bytes() == data
    with open(tmp_path / "none", "wb") as out:
        assert store.download("missing", out) is None


def test_a_hung_tier_fails_within_its_timeout(s3: S3Server) -> None:
    proxy = GitProxy(s3.port, held=True)  # accepts, then says nothing
    try:
        store = open_store(_s3_location(s3, "hung", proxy.port, timeout=1.0))
        started = time.monotonic()
        with pytest.raises(TierError) as raised:
            store.head("anything")
        assert time.monotonic() - started < 10
        assert "s3://fleet/hung" in str(raised.value)
        assert "test-secret-key" not in str(raised.value)
    finally:
        proxy.stop()


def test_urls_are_checked() -> None:
    assert check_url(" s3://my-bucket/some/prefix/ ") == "s3://my-bucket/some/prefix"
    assert check_url("s3://my-bucket") == "s3://my-bucket"
    assert check_url("file:///srv/tier/../tier") == "file:///srv/tier"
    assert check_url("") == ""
    for bad in (
        "s3://AB/x",
        "s3://user:secret@bucket/x",
        "s3://bucket/a//b",
        "s3://bucket/x?y=1",
        "file://relative/path",
        "http://bucket/x",
        "bucket/x",
    ):
        with pytest.raises(ValueError):
            check_url(bad)
    assert check_endpoint("http://127.0.0.1:9000/") == "http://127.0.0.1:9000"
    for bad in ("ftp://host", "http://user:pw@host", "host:9000"):
        with pytest.raises(ValueError):
            check_endpoint(bad)


def test_keys_come_from_checked_parts() -> None:
    digest = digest_of(SHA256, b"x")
    assert blob_key(digest) == f"blobs/sha256/{digest.hex[:2]}/{digest.hex}"
    assert snapshot_key("https://example.com/r.git", "a" * 40).startswith("snapshots/")
    with pytest.raises(ValueError):
        snapshot_key("https://example.com/r.git", "../../etc")
    for bad in ("", "../x", "a/b", "-x", "x" * 200):
        with pytest.raises(ValueError):
            check_checkpoint_name(bad)


def test_credentials_from_a_shared_file(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[default]\naws_access_key_id = A1\naws_secret_access_key = S1\n"
        "[other]\naws_access_key_id = A2\naws_secret_access_key = S2\naws_session_token = T2\n"
    )
    base = TierLocation(url="s3://bucket-x", credentials_file=str(credentials), environ={})
    assert base.credentials() == {"access_key_id": "A1", "secret_access_key": "S1"}
    other = TierLocation(
        url="s3://bucket-x", credentials_file=str(credentials), environ={"AWS_PROFILE": "other"}
    )
    assert other.credentials() == {"access_key_id": "A2", "secret_access_key": "S2", "token": "T2"}
    env = TierLocation(
        url="s3://bucket-x",
        credentials_file=str(credentials),
        environ={"AWS_ACCESS_KEY_ID": "E", "AWS_SECRET_ACCESS_KEY": "F"},
    )
    assert env.credentials() == {"access_key_id": "E", "secret_access_key": "F"}
    assert "S1" not in repr(base) and "A1" not in base.display


def _store_with(tmp_path: Path, blobs: list[bytes]) -> ContentStore:
    recorder = UsageRecorder(tmp_path / "cas")
    cas = ContentStore(tmp_path / "cas", recorder)
    for data in blobs:
        cas.add_bytes(SHA256, data)
    recorder.flush()
    recorder.close()
    return ContentStore(tmp_path / "cas")


def test_the_backlog_is_what_the_tier_does_not_hold(store: ObjectStore, tmp_path: Path) -> None:
    blobs = [os.urandom(100 + i) for i in range(5)]
    cas = _store_with(tmp_path, blobs)
    ledger = Ledger(tmp_path, cas.root, "tier-a")
    assert ledger.backlog_size() == (5, sum(map(len, blobs)))
    store.put_new(blob_key(digest_of(SHA256, blobs[0])), blobs[0])  # another node was first
    report = push(store, ledger, cas)
    assert (report.uploaded, report.already_there, report.failed) == (4, 1, 0)
    assert ledger.backlog_size() == (0, 0)
    for data in blobs:
        got = store.get(blob_key(digest_of(SHA256, data)))
        assert got is not None and got[0] == data
    ledger.close()
    assert Ledger(tmp_path, cas.root, "tier-a").backlog_size() == (0, 0)  # it lasts
    assert Ledger(tmp_path, cas.root, "tier-b").backlog_size()[0] == 5  # another tier


def test_read_through_verifies_what_the_tier_gives(
    store: ObjectStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good, bad = os.urandom(3000), os.urandom(3000)
    good_digest, bad_digest = digest_of(SHA256, good), digest_of(SHA256, bad)
    store.put_new(blob_key(good_digest), good)
    store.put_new(blob_key(bad_digest), bad[:-1] + bytes([bad[-1] ^ 1]))
    cas = ContentStore(tmp_path / "cas")
    ledger = Ledger(tmp_path, cas.root, "t")
    reads = TierReads(store, ledger, 5.0)
    assert reads.fetch(cas, good_digest) == cas.path_of(good_digest)
    assert cas.path_of(good_digest).read_bytes() == good
    assert reads.fetch(cas, bad_digest) is None
    assert [r.getMessage()[:40] for r in caplog.records if r.levelname == "ERROR"] == [
        f"the tier's copy of {bad_digest}"[:40]
    ]
    assert not cas.contains(bad_digest)
    assert reads.fetch(cas, digest_of(SHA256, b"absent")) is None
    assert ledger.holds(good_digest) and not ledger.holds(bad_digest)
    assert not list(cas.root.glob("*/*/.tmp-*"))  # no staging file left behind


def test_a_download_stops_at_the_size_the_reader_expects(
    store: ObjectStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An object longer than its blob (a bucket's mistake or malice) is damaged: the download
    stops at the bound instead of filling the disk, and the tier is not taken for down."""
    data = os.urandom(3000)
    digest = digest_of(SHA256, data)
    store.put_new(blob_key(digest), data + os.urandom(20 << 20))
    cas = ContentStore(tmp_path / "cas")
    reads = TierReads(store, Ledger(tmp_path, cas.root, "t"), 5.0)
    assert reads.fetch(cas, digest, len(data)) is None
    assert not cas.contains(digest) and reads.up()
    assert [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "WARNING")] == [
        f"the tier's copy of {digest} is damaged (more than the 3,000 bytes expected): not used;"
        " the origin is asked instead"
    ]
    assert not list(cas.root.glob("*/*/.tmp-*"))


def test_fetch_leases_one_holder_renewal_and_take_over(store: ObjectStore) -> None:
    """tier/leases.py against both stores: one node holds a blob's lease; a renewal keeps it
    (a waiter's stale ETag cannot take it); an abandoned one is taken over by exactly one."""
    digest = digest_of(SHA256, os.urandom(16))
    first = leases.take(store, digest, "node-a")
    assert first is not None
    assert leases.take(store, digest, "node-b") is None
    seen = leases.current_etag(store, digest)
    assert seen == first.etag
    renewed = leases.renew(store, first, "node-a")
    assert renewed is not None and renewed.etag != first.etag
    assert leases.take_over(store, digest, "node-b", first.etag) is None  # it was renewed
    taken = leases.take_over(store, digest, "node-b", renewed.etag)  # abandoned since
    assert taken is not None
    assert leases.take_over(store, digest, "node-c", renewed.etag) is None  # one winner
    assert leases.renew(store, renewed, "node-a") is None  # node A learns it lost it


def test_a_lease_is_abandoned_after_it_stays_the_same_for_a_while() -> None:
    watch = leases.Watch(fresh_seconds=6.0)
    assert not watch.abandoned('"e1"', now=100.0)
    assert not watch.abandoned('"e1"', now=105.9)
    assert not watch.abandoned('"e2"', now=106.0)  # renewed: a new ETag starts the clock again
    assert not watch.abandoned('"e2"', now=111.9)
    assert watch.abandoned('"e2"', now=112.0)
    assert leases.Watch().abandoned(None, now=0.0)  # no lease at all: take one
