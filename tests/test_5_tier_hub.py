"""Hub files from the shared tier (issue 16, item 2): two homes on this machine stand for two
nodes of a fleet sharing one S3 tier (moto's server over HTTP), each mounting the same model
from the Hub stand-in through FUSE.

Node A reads the model from the Hub; its worker uploads the blobs behind it (write-behind) and
the block list of the large one. Node B, with a cold store, then reads everything, random
ranges of the large file first, and the Hub serves it no byte of file content. A damaged tier
object costs node B a detour to the Hub, never a wrong byte (its blocks are checked against the
block list); one damaged together with its block list is caught by the whole-file digest (the
open file that was served it fails, a new open reads the Hub's bytes). A tier that is hung from
the start, that fails mid-file or that hangs mid-file costs a bounded wait, and the Hub serves
the rest. The block lists and the re-asking of a tier that lacked a blob are also tested
in-process against a directory tier.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from artifactfs.cas import ContentStore, Digest
from artifactfs.sources.hub.tier_ranges import (
    RECHECK_SECONDS,
    TierRanges,
    block_list,
    blocks_key,
    parse_block_list,
)
from artifactfs.tier.access import TierAccess
from artifactfs.tier.keys import blob_key
from artifactfs.tier.location import TierLocation
from tests.conftest import hub_env
from tests.helpers.checklogs import ExpectLog
from tests.helpers.hub import HubServer, git_blob_id
from tests.helpers.mounts import errno_of, mounted
from tests.helpers.s3 import S3Server, running_s3
from tests.helpers.servers import GitProxy
from tests.helpers.waiting import wait_for

MiB = 1 << 20
BUCKET = "fleet"
REPO = "org/fleet-model"
BIG = "weights/model.bin"
BLOCK = 256 * 1024


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_s3(tmp_path_factory.mktemp("s3") / "moto.log") as server:
        server.make_bucket(BUCKET)
        yield server


@pytest.fixture(scope="module")
def model() -> dict[str, bytes]:
    rng = random.Random(16)
    return {
        BIG: rng.randbytes(64 * MiB),
        "weights/small.bin": rng.randbytes(3 * MiB),  # LFS, small: whole from the tier
        "config.json": b'{"model_type": "fleet", "hidden_size": 64}\n',
        "README.md": b"# a model for a fleet\n" * 50,
    }


class StallingProxy:
    """A TCP proxy in front of the S3 server that can stop answering on every connection at
    once, open ones included (``GitProxy`` holds only new ones, and the S3 client keeps its
    connections alive): a tier that hangs in the middle of a file."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._stalled = threading.Event()
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self._stalled.set()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                return
            self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                while self._stalled.is_set() and not self._closing.is_set():
                    self._closing.wait(0.05)  # hung: hold the bytes until the proxy stops
                if self._closing.is_set():
                    return
                target.sendall(data)

    def stop(self) -> None:
        self._closing.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


def expect_tier_failure(expect_log: ExpectLog) -> None:
    """What a node logs when the tier fails under it: once that it is left alone, and maybe
    that the snapshot could not be shared (the worker shares it in the background)."""
    expect_log(r"the tier failed .*; the origin is used", level="WARNING", required=True)
    expect_log(r"could not share the snapshot of \w+ with the tier", level="WARNING")


def tier_env(s3: S3Server, prefix: str, endpoint: str | None = None) -> dict[str, str]:
    return {
        "ARTIFACTFS_TIER_URL": f"s3://{BUCKET}/{prefix}",
        "ARTIFACTFS_TIER_ENDPOINT": endpoint or s3.endpoint,
        **s3.env(),
    }


def node_env(hub: HubServer, tmp_path: Path, name: str, tier: dict[str, str]) -> dict[str, str]:
    """A node's environment: its own huggingface_hub home (nothing shared but the tier)."""
    return {**hub_env(hub, tmp_path), "HF_HOME": str(tmp_path / f"hf-{name}"), **tier}


def tier_keys(model: dict[str, bytes]) -> dict[str, str]:
    """Where the tier keeps each file: LFS files by sha256, the others by git blob id."""
    keys = {}
    for path, data in model.items():
        if path.endswith(".bin"):
            digest = Digest.parse("sha256", hashlib.sha256(data).hexdigest())
        else:
            digest = Digest.parse("git-sha1", git_blob_id(data))
        keys[path] = blob_key(digest)
    return keys


def blocks_key_of(data: bytes) -> str:
    return blocks_key(Digest.parse("sha256", hashlib.sha256(data).hexdigest()))


def read(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def pread(path: Path, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def kept(home: Path, data: bytes) -> Path:
    hex_digest = hashlib.sha256(data).hexdigest()
    return home / "cas" / "sha256" / hex_digest[:2] / hex_digest


def fill_tier(
    hub: HubServer, s3: S3Server, model: dict[str, bytes], tmp_path: Path, prefix: str
) -> None:
    """Node A reads the whole model from the Hub; returns once the tier holds all of it."""
    hub.create_repo(REPO, model)
    env = node_env(hub, tmp_path, "a", tier_env(s3, prefix))
    with mounted(f"hf://{REPO}", tmp_path / "mnt-a", tmp_path / "home-a", env=env) as node_a:
        for path, data in model.items():
            assert read(node_a.path / path) == data, path
        assert hub.total_bytes_served() == sum(len(data) for data in model.values())
        wanted = {f"{prefix}/{key}" for key in tier_keys(model).values()}
        wanted.add(f"{prefix}/{blocks_key_of(model[BIG])}")
        wait_for(
            lambda: wanted <= set(s3.objects(BUCKET, prefix)),
            60,
            "the tier to hold node A's blobs and the big file's block list",
            interval=0.2,
            while_alive=node_a.check_alive,
        )
    assert s3.read(BUCKET, f"{prefix}/{tier_keys(model)[BIG]}") == model[BIG]
    hub.clear_counters()


def test_a_second_node_reads_the_model_from_the_tier_and_nothing_from_the_hub(
    hub: HubServer, s3: S3Server, model: dict[str, bytes], tmp_path: Path
) -> None:
    prefix = f"fleet-{os.urandom(4).hex()}"
    fill_tier(hub, s3, model, tmp_path, prefix)

    env = node_env(hub, tmp_path, "b", tier_env(s3, prefix))
    home_b = tmp_path / "home-b"
    with mounted(f"hf://{REPO}", tmp_path / "mnt-b", home_b, env=env) as node_b:
        big, rng = model[BIG], random.Random(5)
        for _ in range(24):  # random ranges first: fetched by range, each block checked
            offset, size = rng.randrange(len(big)), rng.choice((1, 4096, 300_000, 3 * MiB))
            assert pread(node_b.path / BIG, offset, size) == big[offset : offset + size]
        assert pread(node_b.path / BIG, len(big) - 10, 100) == big[-10:]
        for path, data in model.items():
            assert read(node_b.path / path) == data, path
        wait_for(lambda: kept(home_b, big).exists(), 30, "the big file verified and kept")
        assert read(node_b.path / BIG) == big
    assert hub.total_bytes_served() == 0, "node B fetched file content from the Hub"


def test_a_damaged_tier_object_costs_a_detour_to_the_hub_never_a_wrong_byte(
    hub: HubServer, s3: S3Server, model: dict[str, bytes], tmp_path: Path, expect_log: ExpectLog
) -> None:
    prefix = f"damaged-{os.urandom(4).hex()}"
    fill_tier(hub, s3, model, tmp_path, prefix)
    big = model[BIG]
    bad_at = 40 * MiB + 12345
    damaged = bytearray(big)
    damaged[bad_at] ^= 0xFF
    s3.write(BUCKET, f"{prefix}/{tier_keys(model)[BIG]}", bytes(damaged))
    expect_log(r"the tier's copy of sha256:\w+ is damaged", level="ERROR", required=True)

    env = node_env(hub, tmp_path, "b", tier_env(s3, prefix))
    home_b = tmp_path / "home-b"
    with mounted(f"hf://{REPO}", tmp_path / "mnt-b", home_b, env=env) as node_b:
        assert pread(node_b.path / BIG, 0, 16 * MiB) == big[: 16 * MiB]  # from the tier
        # then the damaged block: checked, refused, fetched from the Hub (and what follows)
        assert pread(node_b.path / BIG, bad_at - 10, 20) == big[bad_at - 10 : bad_at + 10]
        assert read(node_b.path / BIG) == big
        wait_for(lambda: kept(home_b, big).exists(), 30, "the big file verified and kept")
    served = hub.bytes_served(REPO, BIG)
    assert 0 < served <= len(big) - 16 * MiB, served  # what was read first came from the tier
    assert hub.total_bytes_served() == served  # the small files still from the tier


def test_a_hung_tier_costs_a_bounded_wait_and_the_hub_serves(
    hub: HubServer, s3: S3Server, model: dict[str, bytes], tmp_path: Path, expect_log: ExpectLog
) -> None:
    prefix = f"hung-{os.urandom(4).hex()}"
    fill_tier(hub, s3, model, tmp_path, prefix)
    expect_tier_failure(expect_log)
    expect_log(r"upload of .* to the tier failed", level="WARNING")

    proxy = GitProxy(s3.port, held=True)  # accepts, then answers nothing
    try:
        env = node_env(hub, tmp_path, "b", tier_env(s3, prefix, f"http://127.0.0.1:{proxy.port}"))
        env["ARTIFACTFS_TIER_TIMEOUT"] = "1"
        with mounted(f"hf://{REPO}", tmp_path / "mnt-b", tmp_path / "home-b", env=env) as node_b:
            started = time.monotonic()
            big = model[BIG]
            assert pread(node_b.path / BIG, 30 * MiB, 5000) == big[30 * MiB : 30 * MiB + 5000]
            for path, data in model.items():
                assert read(node_b.path / path) == data, path
            elapsed = time.monotonic() - started
    finally:
        proxy.stop()
    assert elapsed < 20, f"a hung tier held reads up for {elapsed:.1f} s"
    assert hub.bytes_served(REPO, BIG) >= len(model[BIG])


def test_a_tier_that_fails_mid_file_hands_the_rest_to_the_hub(
    hub: HubServer, s3: S3Server, model: dict[str, bytes], tmp_path: Path, expect_log: ExpectLog
) -> None:
    prefix = f"mid-{os.urandom(4).hex()}"
    fill_tier(hub, s3, model, tmp_path, prefix)
    expect_tier_failure(expect_log)

    env = node_env(hub, tmp_path, "b", tier_env(s3, prefix))
    with mounted(f"hf://{REPO}", tmp_path / "mnt-b", tmp_path / "home-b", env=env) as node_b:
        big = model[BIG]
        assert pread(node_b.path / BIG, 0, 8 * MiB) == big[: 8 * MiB]
        assert hub.total_bytes_served() == 0
        # the object shrinks under the reader: its next ranges fail at the tier
        s3.write(BUCKET, f"{prefix}/{tier_keys(model)[BIG]}", big[: 4 * MiB])
        assert read(node_b.path / BIG) == big
    served = hub.bytes_served(REPO, BIG)
    assert 0 < served <= len(big) - 8 * MiB, served


# -- block lists, in-process against a directory tier -------------------------------------


def test_tier_ranges_serve_checked_blocks_only_and_stop_at_a_bad_one(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(3 * MiB + 1000)
    digest = Digest.parse("sha256", hashlib.sha256(data).hexdigest())
    source = tmp_path / "blob"
    source.write_bytes(data)
    listed = block_list(digest, len(data), source)
    assert parse_block_list(listed, digest, len(data)) is not None
    assert parse_block_list(listed, digest, len(data) + 1) is None  # another size
    assert parse_block_list(listed[:-1], digest, len(data)) is None  # cut short

    shared = tmp_path / "shared"
    (shared / blob_key(digest)).parent.mkdir(parents=True)
    (shared / blocks_key(digest)).parent.mkdir(parents=True)
    damaged = bytearray(data)
    damaged[2 * MiB + 5] ^= 1  # in block 8
    (shared / blob_key(digest)).write_bytes(bytes(damaged))
    (shared / blocks_key(digest)).write_bytes(listed)
    tier = TierAccess(TierLocation(url=f"file://{shared}"), tmp_path / "home", tmp_path / "cas")
    (tmp_path / "home").mkdir()
    ranges = TierRanges(tier, ContentStore(tmp_path / "cas"))
    got: dict[int, bytes] = {}

    async def deliver(offset: int, chunk: bytes) -> None:
        got[offset] = chunk

    async def main() -> tuple[bool, int, int, bool]:
        held = await ranges.holds(digest, len(data))
        first = await ranges.fetch(digest, 0, MiB, deliver)
        stopped = await ranges.fetch(digest, MiB, len(data), deliver)
        return held, first, stopped, await ranges.holds(digest, len(data))

    try:
        held, first, stopped, held_after = trio.run(main)
    finally:
        tier.close()
    assert held and first == MiB
    assert stopped == 2 * MiB  # the checked blocks before the bad one, and no more
    assert b"".join(got[offset] for offset in sorted(got)) == data[: 2 * MiB]
    assert not held_after  # never asked again for that blob


def test_a_blob_the_tier_lacked_is_asked_about_again_after_a_while(tmp_path: Path) -> None:
    data = random.Random(4).randbytes(MiB + 7)
    digest = Digest.parse("sha256", hashlib.sha256(data).hexdigest())
    shared, home = tmp_path / "shared", tmp_path / "home"
    shared.mkdir()
    home.mkdir()
    tier = TierAccess(TierLocation(url=f"file://{shared}"), home, tmp_path / "cas")
    ranges = TierRanges(tier, ContentStore(tmp_path / "cas"))
    clock = MockClock()

    def upload() -> None:  # what another node's worker does meanwhile
        source = tmp_path / "blob"
        source.write_bytes(data)
        for key, content in (
            (blob_key(digest), data),
            (blocks_key(digest), block_list(digest, len(data), source)),
        ):
            (shared / key).parent.mkdir(parents=True, exist_ok=True)
            (shared / key).write_bytes(content)

    async def main() -> list[bool]:
        answers = [await ranges.holds(digest, len(data))]
        upload()
        answers.append(await ranges.holds(digest, len(data)))  # remembered
        clock.jump(RECHECK_SECONDS + 1)
        answers.append(await ranges.holds(digest, len(data)))  # asked again
        return answers

    try:
        assert trio.run(main, clock=clock) == [False, False, True]
    finally:
        tier.close()


def test_a_tier_copy_damaged_with_its_block_list_is_caught_whole_and_fetched_from_the_hub(
    hub: HubServer, s3: S3Server, model: dict[str, bytes], tmp_path: Path, expect_log: ExpectLog
) -> None:
    """The block list is no stronger than the bucket: rewritten to match a damaged object, the
    damaged bytes pass the block checks and are served. The whole-file digest catches it when
    the file is complete: the open file that was served them fails its next read (EIO), the
    tier is not asked for the blob again, and a new open reads the Hub's bytes."""
    prefix = f"forged-{os.urandom(4).hex()}"
    fill_tier(hub, s3, model, tmp_path, prefix)
    big = model[BIG]
    digest = Digest.parse("sha256", hashlib.sha256(big).hexdigest())
    damaged = bytearray(big)
    damaged[40 * MiB + 12345] ^= 0xFF
    forged = tmp_path / "forged"
    forged.write_bytes(damaged)
    s3.write(BUCKET, f"{prefix}/{blob_key(digest)}", bytes(damaged))
    s3.write(BUCKET, f"{prefix}/{blocks_key(digest)}", block_list(digest, len(big), forged))
    expect_log(r"the tier's copy of sha256:\w+ is damaged", level="ERROR", required=True)
    expect_log(r"bytes this open file was served did not match", level="ERROR", required=True)

    env = node_env(hub, tmp_path, "b", tier_env(s3, prefix))
    home_b = tmp_path / "home-b"
    with mounted(f"hf://{REPO}", tmp_path / "mnt-b", home_b, env=env) as node_b:
        fd = os.open(node_b.path / BIG, os.O_RDONLY)
        try:
            with contextlib.suppress(OSError):  # EIO if the check ends before the read does
                while os.read(fd, MiB):
                    pass
            wait_for(
                lambda: "will be fetched again" in node_b.log(),
                30,
                "the whole-file check to throw the tier's copy away",
                while_alive=node_b.check_alive,
            )
            assert errno_of(lambda: os.pread(fd, 4096, 0)) == errno.EIO
        finally:
            os.close(fd)
        assert read(node_b.path / BIG) == big
        wait_for(lambda: kept(home_b, big).exists(), 30, "the Hub's copy verified and kept")
    assert hub.bytes_served(REPO, BIG) == len(big)


def test_a_tier_that_hangs_mid_file_hands_the_rest_to_the_hub_within_a_bounded_wait(
    hub: HubServer, s3: S3Server, model: dict[str, bytes], tmp_path: Path, expect_log: ExpectLog
) -> None:
    prefix = f"stall-{os.urandom(4).hex()}"
    fill_tier(hub, s3, model, tmp_path, prefix)
    expect_tier_failure(expect_log)

    proxy = StallingProxy(s3.port)
    try:
        env = node_env(hub, tmp_path, "b", tier_env(s3, prefix, f"http://127.0.0.1:{proxy.port}"))
        env["ARTIFACTFS_TIER_TIMEOUT"] = "1"
        with mounted(f"hf://{REPO}", tmp_path / "mnt-b", tmp_path / "home-b", env=env) as node_b:
            big = model[BIG]
            assert pread(node_b.path / BIG, 0, 8 * MiB) == big[: 8 * MiB]
            assert hub.total_bytes_served() == 0
            proxy.stall()
            started = time.monotonic()
            assert read(node_b.path / BIG) == big
            elapsed = time.monotonic() - started
    finally:
        proxy.stop()
    assert elapsed < 20, f"a tier hung mid-file held the reader up for {elapsed:.1f} s"
    served = hub.bytes_served(REPO, BIG)
    assert 0 < served <= len(big) - 8 * MiB, served


def _read_in_thread(path: Path, results: dict[str, bytes | BaseException], name: str) -> None:
    try:
        results[name] = read(path)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        results[name] = exc


def test_nodes_starting_together_on_an_empty_tier_fetch_one_copy_from_the_hub(
    hub: HubServer, s3: S3Server, model: dict[str, bytes], tmp_path: Path
) -> None:
    """Fetch leases (tier/leases.py): of two nodes reading the large file at once with
    nothing in the tier, one takes the lease and fetches it from the Hub; the other waits for
    the tier (longer than its io timeout would allow a silent origin) and reads it from there."""
    prefix = f"together-{os.urandom(4).hex()}"
    hub.create_repo(REPO, model)
    big = model[BIG]
    tier = tier_env(s3, prefix)
    env_a = {**node_env(hub, tmp_path, "a", tier), "ARTIFACTFS_IO_TIMEOUT": "5"}
    env_b = {**node_env(hub, tmp_path, "b", tier), "ARTIFACTFS_IO_TIMEOUT": "5"}
    with (
        mounted(f"hf://{REPO}", tmp_path / "mnt-a", tmp_path / "home-a", env=env_a) as node_a,
        mounted(f"hf://{REPO}", tmp_path / "mnt-b", tmp_path / "home-b", env=env_b) as node_b,
    ):
        results: dict[str, bytes | BaseException] = {}
        readers = [
            threading.Thread(target=_read_in_thread, args=(node.path / BIG, results, name))
            for name, node in (("a", node_a), ("b", node_b))
        ]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(110)
        assert results == {"a": big, "b": big}
    assert hub.bytes_served(REPO, BIG) == len(big), "the Hub sent the large file more than once"


def test_a_lease_its_holder_abandons_is_taken_over(
    hub: HubServer, s3: S3Server, model: dict[str, bytes], tmp_path: Path
) -> None:
    """Node A takes the lease for one small read and goes quiet; node B, waiting on it, sees it
    go stale (unchanged for a few seconds of B's own clock), takes it over and fetches the
    file from the Hub itself: the right bytes, at the cost of a bounded wait."""
    prefix = f"abandoned-{os.urandom(4).hex()}"
    hub.create_repo(REPO, model)
    big = model[BIG]
    tier = tier_env(s3, prefix)
    lease = f"{prefix}/leases/" + tier_keys(model)[BIG].removeprefix("blobs/")
    env_a, env_b = node_env(hub, tmp_path, "a", tier), node_env(hub, tmp_path, "b", tier)
    with mounted(f"hf://{REPO}", tmp_path / "mnt-a", tmp_path / "home-a", env=env_a) as node_a:
        assert pread(node_a.path / BIG, 0, 4096) == big[:4096]
        assert lease in set(s3.objects(BUCKET, prefix))  # A took it to fetch from the Hub
        with mounted(f"hf://{REPO}", tmp_path / "mnt-b", tmp_path / "home-b", env=env_b) as node_b:
            assert read(node_b.path / BIG) == big
    assert hub.bytes_served(REPO, BIG) < 2 * len(big)
