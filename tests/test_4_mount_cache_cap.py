"""The store's size cap through a real mount: a mount with a cap of a few MiB reads far more
than the cap; every read is right, the store stays under the cap plus its stated slack (the
hard limit, cap + 10 %: cas/eviction.py) after every read, a file held open keeps its blob
(and reads right) the whole time, pinned blobs stay, and evicted files read right again."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from artifactfs.cas import GIT_SHA1, SHA256, Digest
from artifactfs.cas.eviction import CachePolicy
from artifactfs.cas.usage import UsageDB
from tests.conftest import hub_env
from tests.helpers.gitrepos import make_repo
from tests.helpers.hub import HubServer
from tests.helpers.mounts import mounted, run_cli
from tests.helpers.servers import GitDaemon
from tests.helpers.stores import store_bytes, uncapped_files
from tests.helpers.waiting import wait_for

CAP = 4 << 20
KiB = 1 << 10


def blob_path(home: Path, oid: str) -> Path:
    return home / "cas" / "git-sha1" / oid[:2] / oid


def test_a_small_cap_holds_while_reading_far_more(
    daemon: GitDaemon, repos: Path, mnt: Path, home: Path
) -> None:
    files = uncapped_files(40)
    total = sum(len(content) for content in files.values())
    assert total > 4 * CAP
    repo = make_repo(repos, "big.git", files)
    hard_limit = CachePolicy(CAP).hard_limit
    names = sorted(files)
    held_name, pinned_name, others = names[0], names[1], names[2:]
    with mounted(daemon.url("big.git"), mnt, home, "--cache-max-size", "4M"):
        db = UsageDB(home / "cas")  # what `artifactfs pin` writes
        try:
            db.set_pins("big", [pinned_name], [Digest(GIT_SHA1, repo.blob_id(pinned_name))])
        finally:
            db.close()
        assert (mnt / pinned_name).read_bytes() == files[pinned_name]
        held = os.open(mnt / held_name, os.O_RDONLY)
        try:
            assert os.pread(held, 4096, 0) == files[held_name][:4096]
            samples = []
            for name in others:
                assert (mnt / name).read_bytes() == files[name], name
                samples.append(store_bytes(home))
                assert samples[-1] <= hard_limit, (name, samples)
                assert blob_path(home, repo.blob_id(held_name)).exists(), name
                assert blob_path(home, repo.blob_id(pinned_name)).exists(), name
            content = files[held_name]
            for offset in range(0, len(content), 64 * KiB):  # the open file reads right
                assert os.pread(held, 64 * KiB, offset) == content[offset : offset + 64 * KiB]
        finally:
            os.close(held)
        print(f"read {total >> 20} MiB through a {CAP >> 20} MiB cache; store samples (KiB):",
              [s >> 10 for s in samples])  # fmt: skip
        evicted = [n for n in others if not blob_path(home, repo.blob_id(n)).exists()]
        assert len(evicted) > len(others) // 2
        assert blob_path(home, repo.blob_id(pinned_name)).exists()
    # another mount (the kernel's cache of the first is gone with it): evicted files are
    # fetched again, and read right
    with mounted(daemon.url("big.git"), mnt, home, "--cache-max-size", "4M"):
        for name in evicted[:5]:
            assert (mnt / name).read_bytes() == files[name]
            assert blob_path(home, repo.blob_id(name)).exists()
            assert store_bytes(home) <= hard_limit


def sha256_path(home: Path, content: bytes) -> Path:
    hex_digest = hashlib.sha256(content).hexdigest()
    return home / "cas" / "sha256" / hex_digest[:2] / hex_digest


def recorded(home: Path, digest: Digest) -> bool:
    usage = UsageDB(home / "cas")
    try:
        return usage.get(digest) is not None
    finally:
        usage.close()


def read_uncached(path: Path) -> bytes:
    """Read a file of the mount past the kernel's page cache of it (``keep_cache`` would
    otherwise answer without asking the worker)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def test_hub_files_evicted_under_a_mount_are_fetched_again(
    hub: HubServer, tmp_path: Path, mnt: Path, home: Path
) -> None:
    """Hub (LFS) files too: one held open keeps its blob while others push the store past
    its cap; once closed and evicted (``cache evict``), reading it again fetches it again."""
    rng = random.Random(16)
    files = {f"weights/w{i}.bin": rng.randbytes(3 << 20) for i in range(4)}
    hub.create_repo("org/capped", files)
    held_name, *others = sorted(files)
    with mounted(
        "hf://org/capped", mnt, home, "--cache-max-size", "4M", env=hub_env(hub, tmp_path)
    ):
        held = os.open(mnt / held_name, os.O_RDONLY)
        try:
            assert os.pread(held, 4096, 0) == files[held_name][:4096]  # in use from here
            assert read_uncached(mnt / held_name) == files[held_name]
            # kept once verified, which a loaded disk can delay past the reads below
            wait_for(lambda: sha256_path(home, files[held_name]).exists(), 30, "held file kept")
            for name in others:
                assert read_uncached(mnt / name) == files[name]
                assert sha256_path(home, files[held_name]).exists(), name
            assert os.pread(held, 4096, 1 << 20) == files[held_name][1 << 20 : (1 << 20) + 4096]
        finally:
            os.close(held)
        # the worker records what it published in batches (every 2 s), and ``cache evict``
        # works from those records; closed, the file may also go by the worker's own eviction
        held_digest = Digest(SHA256, hashlib.sha256(files[held_name]).hexdigest())
        wait_for(
            lambda: recorded(home, held_digest) or not sha256_path(home, files[held_name]).exists(),
            30,
            "the held file's use recorded",
        )
        evicted = run_cli("cache", "evict", "--to", "0", home=home)
        assert evicted.returncode == 0, evicted.stderr
        assert not sha256_path(home, files[held_name]).exists(), evicted.stdout
        served = hub.bytes_served("org/capped", held_name)
        assert read_uncached(mnt / held_name) == files[held_name]
        assert hub.bytes_served("org/capped", held_name) >= served + len(files[held_name])
        wait_for(lambda: sha256_path(home, files[held_name]).exists(), 30, "kept again")
