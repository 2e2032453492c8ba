"""Layer 3 without a kernel: every read goes through the real gate, operations, content,
fetcher and source (git over ``file://``, or the memory source), in this process
(tests/helpers/inprocess.py). What a test sees is what the kernel would get: attributes,
exact bytes, or the errno of a ``FUSEError``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pyfuse3
import pytest
import trio
import trio.testing

from artifactfs.cas import GIT_SHA1, ContentStore, Digest
from artifactfs.errors import UserError
from artifactfs.fs.gate import GateState
from artifactfs.snapshot import ROOT_INODE
from artifactfs.sources import SourceSettings, open_source, parse_source, registry
from tests.conftest import SAMPLE_FILES, hub_env
from tests.helpers.gitrepos import Content as FileContent
from tests.helpers.gitrepos import Executable, Repo, Submodule, Symlink, commit_files, make_repo
from tests.helpers.hub import HubServer
from tests.helpers.inprocess import CTX, Harness, children_of, in_process, until
from tests.helpers.memory_source import MemoryOrigin, MemorySpec, memory_kind
from tests.helpers.sources import settings_for

Body = Callable[[Harness], Awaitable[None]]


def file_url(repo: Repo) -> str:
    return f"file://{repo.path}"


@asynccontextmanager
async def mounted(
    url: str, settings: SourceSettings, *, prepare: bool = True
) -> AsyncIterator[Harness]:
    """``url`` through the registry, as a mount opens it, served in-process."""
    source = open_source(parse_source(url), settings)
    async with in_process(source, settings.counters, prepare=prepare) as harness:
        yield harness


def run_mounted(url: str, tmp_path: Path, body: Body, *, prepare: bool = True) -> None:
    settings = settings_for(tmp_path)

    async def main() -> None:
        async with mounted(url, settings, prepare=prepare) as harness:
            await body(harness)

    trio.run(main)


@pytest.fixture
def origins(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, MemoryOrigin]]:
    """Memory origins by name, reachable as ``mem://NAME`` through the registry: the kind is
    added by patching ``KINDS`` alone (nothing in fs/ or mount/ changes)."""
    found: dict[str, MemoryOrigin] = {}
    monkeypatch.setattr(registry, "KINDS", (*registry.KINDS, memory_kind(found)))
    yield found


def counts(harness: Harness) -> tuple[int, int, int]:
    """Fetches, blobs fetched and bytes received so far (prepare fetches symlink targets)."""
    counters = harness.counters
    return counters.blob_fetches, counters.blobs_fetched, counters.bytes_received


def sample_files() -> dict[str, FileContent]:
    """SAMPLE_FILES, typed as what ``make_repo`` and a memory origin take."""
    files: dict[str, FileContent] = {}
    for path, content in SAMPLE_FILES.items():
        assert isinstance(content, bytes | Executable | Symlink | Submodule)
        files[path] = content
    return files


def expected_bytes(content: object) -> bytes | None:
    if isinstance(content, bytes):
        return content
    if isinstance(content, Executable):
        return content.content
    return None


# -- exact bytes, names and attributes ------------------------------------------------------


async def check_sample(harness: Harness) -> None:
    """Every entry of SAMPLE_FILES, as ``cat``, ``readlink`` and ``ls`` would see it."""
    for path, content in SAMPLE_FILES.items():
        attrs = await harness.lookup_path(path)
        data = expected_bytes(content)
        if data is not None:
            mode = 0o755 if isinstance(content, Executable) else 0o644
            assert (attrs.st_mode, attrs.st_size) == (stat.S_IFREG | mode, len(data)), path
            assert await harness.read_file(path) == data, path
            assert await harness.read_file(path, size=4096) == data, path
        elif isinstance(content, Symlink):
            assert attrs.st_mode == stat.S_IFLNK | 0o777, path
            assert await harness.readlink(path) == content.target
        else:
            assert isinstance(content, Submodule)
            assert stat.S_ISDIR(attrs.st_mode)
            assert await harness.names(path) == [b".", b".."]


def test_every_sample_file_reads_exactly_through_a_file_url(sample: Repo, tmp_path: Path) -> None:
    run_mounted(file_url(sample), tmp_path, check_sample)


def test_a_memory_source_is_registered_without_touching_the_mount(
    origins: dict[str, MemoryOrigin], tmp_path: Path
) -> None:
    """A new kind of origin is a ``SourceKind`` in ``KINDS``: parse, open, prepare and read
    go through the same registry and operations as git; the same tree reads the same."""
    origins["sample"] = MemoryOrigin(sample_files())
    assert parse_source("mem://sample") == MemorySpec("sample")
    with pytest.raises(UserError):
        parse_source("mem://")

    async def body(harness: Harness) -> None:
        await check_sample(harness)
        assert await harness.getxattr("", "user.artifactfs.source") == b"mem://sample"

    run_mounted("mem://sample", tmp_path, body)
    assert origins["sample"].prepares == 1


def test_readdir_lists_names_and_attributes_and_lookup_counts_return_to_zero(
    sample: Repo, tmp_path: Path
) -> None:
    async def body(harness: Harness) -> None:
        root = await harness.listdir("")
        names = [entry.name for entry in root]
        children = {p.split("/")[0].encode() for p in SAMPLE_FILES}
        assert names == [b".", b"..", *sorted(children)]
        assert [entry.offset for entry in root[:2]] == [1, 2]
        by_name = {entry.name: entry.attrs for entry in root}
        assert stat.S_ISDIR(by_name[b"data"].st_mode)
        assert by_name[b"README.md"].st_size == len(b"# sample\n")
        assert by_name[b"empty.txt"].st_mode == stat.S_IFREG | 0o644
        # a listing read two entries at a time is the same listing, with the same counts
        paged = await harness.listdir("", page=2)
        assert [(e.name, e.offset, e.attrs.st_ino) for e in paged] == [
            (e.name, e.offset, e.attrs.st_ino) for e in root
        ]
        inode = by_name[b"README.md"].st_ino
        assert harness.snapshots.lookup_count(inode) == 2
        await harness.read_file("README.md")  # and one lookup more
        assert harness.snapshots.lookup_count(inode) == 3
        assert await harness.names("links") == [
            b".", b"..", b"absolute", b"dangling", b"to-dir", b"to-readme"
        ]  # fmt: skip
        held = dict(harness.held)
        assert held and all(harness.snapshots.lookup_count(i) == n for i, n in held.items())
        await harness.forget_all()
        assert all(harness.snapshots.lookup_count(i) == 0 for i in held)
        assert harness.snapshots.live_generations() == 1

    run_mounted(file_url(sample), tmp_path, body)


def test_extended_attributes_tell_what_is_cached(sample: Repo, tmp_path: Path) -> None:
    async def body(harness: Harness) -> None:
        assert await harness.getxattr("", "user.artifactfs.state") == b"ready"
        assert await harness.getxattr("", "user.artifactfs.commit") == sample.commit.encode()
        assert await harness.getxattr("", "user.artifactfs.files") == b"12"
        path = "data/binary.dat"
        assert await harness.getxattr(path, "user.artifactfs.oid") == sample.blob_id(path).encode()
        assert await harness.getxattr(path, "user.artifactfs.cached") == b"0"
        assert await harness.read_file(path) == SAMPLE_FILES[path]
        assert await harness.getxattr(path, "user.artifactfs.cached") == b"16384"
        fetched = harness.counters.bytes_received
        assert fetched > 0
        assert await harness.getxattr("", "user.artifactfs.bytes_fetched") == b"%d" % fetched
        with pytest.raises(pyfuse3.FUSEError) as raised:
            await harness.getxattr(path, "user.other")
        assert raised.value.errno == pyfuse3.ENOATTR

    run_mounted(file_url(sample), tmp_path, body)


def test_a_read_at_or_past_the_end_fetches_nothing(sample: Repo, tmp_path: Path) -> None:
    async def body(harness: Harness) -> None:
        before = counts(harness)
        fh = await harness.open("data/binary.dat")
        try:
            assert await harness.read(fh, 16384, 4096) == b""
            assert await harness.read(fh, 1 << 30, 4096) == b""
        finally:
            await harness.release(fh)
        assert await harness.read_file("empty.txt") == b""
        assert counts(harness) == before
        assert await harness.getxattr("data/binary.dat", "user.artifactfs.cached") == b"0"

    run_mounted(file_url(sample), tmp_path, body)


def test_errors_are_the_errnos_the_kernel_gets(sample: Repo, tmp_path: Path) -> None:
    async def body(harness: Harness) -> None:
        readme = (await harness.lookup_path("README.md")).st_ino
        data = (await harness.lookup_path("data")).st_ino
        cases: list[tuple[Awaitable[object], int]] = [
            (harness.lookup_path("nope/deeper"), errno.ENOENT),
            (harness.operations.opendir(readme, CTX), errno.ENOTDIR),
            (harness.operations.open(data, 0, CTX), errno.EISDIR),
            (harness.open("README.md", 1), errno.EROFS),
            (harness.readlink("README.md"), errno.EINVAL),
            (harness.read(999, 0, 10), errno.EBADF),
        ]
        for call, code in cases:
            with pytest.raises(pyfuse3.FUSEError) as raised:
                await call
            assert raised.value.errno == code

    run_mounted(file_url(sample), tmp_path, body)


# -- fetching ---------------------------------------------------------------------------------


def test_concurrent_reads_of_one_git_blob_fetch_it_once(sample: Repo, tmp_path: Path) -> None:
    path = "deep/a/b/c/d/leaf.txt"  # alone in its directory: nothing is fetched beside it

    async def body(harness: Harness) -> None:
        fetches, blobs, _ = counts(harness)
        results: list[bytes] = []

        async def reader() -> None:
            results.append(await harness.read_file(path))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(reader)
        assert results == [b"leaf\n"] * 20
        # the fetch thread counts its fetch after it told the readers their blob landed
        await until(lambda: counts(harness)[:2] != (fetches, blobs), "the fetch to be counted")
        await trio.testing.wait_all_tasks_blocked()
        assert counts(harness)[:2] == (fetches + 1, blobs + 1)

    run_mounted(file_url(sample), tmp_path, body)


def test_concurrent_reads_of_one_memory_blob_wait_for_one_fetch(
    origins: dict[str, MemoryOrigin], tmp_path: Path
) -> None:
    origin = origins["m"] = MemoryOrigin({"a.txt": b"alpha\n", "b.txt": b"beta\n"})

    async def body(harness: Harness) -> None:
        results: list[bytes] = []

        async def reader() -> None:
            results.append(await harness.read_file("a.txt"))

        origin.hold()
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(reader)
            await until(lambda: origin.serving == 1, "the fetch to reach the origin")
            await trio.testing.wait_all_tasks_blocked()
            assert (origin.serving, results) == (1, [])  # all 20 wait on one fetch
            origin.release()
        assert results == [b"alpha\n"] * 20
        assert origin.blob_fetches == {origin.blob_id("a.txt"): 1}
        assert await harness.read_file("a.txt") == b"alpha\n"  # from the CAS now
        assert origin.fetches == 1 and harness.counters.blob_fetches == 1

    run_mounted("mem://m", tmp_path, body)


WALK_FILES: dict[str, FileContent] = {
    f"dir{d}/sub/file{f:02}.txt": b"file %d/%d\n" % (d, f) for d in range(4) for f in range(30)
}


def test_a_walk_of_many_files_fetches_ahead(repos: Path, tmp_path: Path) -> None:
    """A program listing the tree and reading its files (``grep -r``): after the first read,
    the rest of the walk comes in one batch of guesses (a fetch child's, being >= 64 blobs),
    and no read of the walk fetches again. Closing the mount leaves no child behind."""
    repo = make_repo(repos, "walk.git", WALK_FILES)

    async def body(harness: Harness) -> None:
        await harness.listdir("")
        await harness.listdir("dir0")
        await harness.listdir("dir0/sub")
        assert counts(harness)[:2] == (0, 0)
        assert await harness.read_file("dir0/sub/file00.txt") == b"file 0/0\n"
        await until(lambda: harness.counters.blobs_fetched == len(WALK_FILES), "the guesses")
        assert harness.counters.blob_fetches == 2  # the demand, then one batch of guesses
        assert children_of(os.getpid()), "a batch this large goes to a fetch child"
        for path, data in WALK_FILES.items():
            assert await harness.read_file(path) == data
        assert harness.counters.blob_fetches == 2

    run_mounted(file_url(repo), tmp_path, body)


def test_a_copy_up_fetches_its_blob_and_no_walk_ahead(repos: Path, tmp_path: Path) -> None:
    """An edit's copy-up (``Content.local_path``) after a program listed the tree (``git
    status`` lists every directory it was told changed) fetches the edited file's blob and
    gives no hint of a walk: no fetch-ahead starts, so the next ``git status`` does not run
    beside a background fetch of the directories git listed. A read of the same file does."""
    repo = make_repo(repos, "walk.git", WALK_FILES)

    async def body(harness: Harness) -> None:
        for directory in ("", "dir0", "dir0/sub"):
            await harness.listdir(directory)
        snapshot = harness.state.snapshot
        assert snapshot is not None
        inode = ROOT_INODE
        for name in (b"dir0", b"sub", b"file00.txt"):
            row = snapshot.lookup(inode, name)
            assert row is not None
            inode = row.inode
        edited = row
        local = await harness.content.local_path(snapshot, edited)
        assert local.read_bytes() == b"file 0/0\n"
        assert counts(harness)[:2] == (1, 1)
        assert harness.content._hints_of(snapshot).ahead is None  # type: ignore[attr-defined]
        assert await harness.read_file("dir0/sub/file01.txt") == b"file 0/1\n"
        assert harness.content._hints_of(snapshot).ahead is not None  # type: ignore[attr-defined]

    run_mounted(file_url(repo), tmp_path, body)


# -- failures: EIO, never wrong bytes -----------------------------------------------------------


def test_an_origin_that_fails_gives_eio_with_one_log_line(
    origins: dict[str, MemoryOrigin], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    origin = origins["m"] = MemoryOrigin({"a.txt": b"alpha\n", "b.txt": b"beta\n"})
    origin.fail("a.txt")

    async def body(harness: Harness) -> None:
        with pytest.raises(pyfuse3.FUSEError) as raised:
            await harness.read_file("a.txt")
        assert raised.value.errno == errno.EIO
        assert await harness.read_file("b.txt") == b"beta\n"  # one failure fails one file

    with caplog.at_level(logging.INFO):
        run_mounted("mem://m", tmp_path, body)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [(r.name, r.getMessage()) for r in errors] == [
        ("artifactfs.fs.gated", f"read: the memory origin refused blob {origin.blob_id('a.txt')}")
    ]
    assert all(r.exc_info is None for r in caplog.records)


@pytest.mark.parametrize("lie", ["bytes", "size"])
def test_an_origin_that_lies_gives_eio_never_wrong_bytes(
    lie: str, origins: dict[str, MemoryOrigin], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = b"the true content\n"
    origin = origins["m"] = MemoryOrigin({"a.txt": data})
    if lie == "bytes":
        origin.lie_bytes("a.txt")
    else:
        origin.lie_size("a.txt")
    digest = Digest(GIT_SHA1, origin.blob_id("a.txt"))

    async def body(harness: Harness) -> None:
        for _ in range(2):  # and again: nothing wrong was kept
            with pytest.raises(pyfuse3.FUSEError) as raised:
                await harness.read_file("a.txt")
            assert raised.value.errno == errno.EIO
        cached = await harness.getxattr("a.txt", "user.artifactfs.cached")
        assert cached == (b"0" if lie == "bytes" else b"%d" % len(data))

    with caplog.at_level(logging.ERROR):
        run_mounted("mem://m", tmp_path, body)
    store = ContentStore(tmp_path / "cas")
    if lie == "bytes":  # the wrong bytes never reached the CAS
        assert not store.contains(digest) and origin.fetches == 2
    else:  # the true bytes did, and were refused under a size the kernel would truncate
        assert store.path_of(digest).read_bytes() == data and origin.fetches == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "artifactfs.fs.gated"]
    assert len(messages) == 2 and all(m.startswith("read: ") for m in messages)
    assert all(r.exc_info is None for r in caplog.records)


# -- the gate -----------------------------------------------------------------------------------


def test_requests_before_prepare_wait_for_it(
    origins: dict[str, MemoryOrigin], tmp_path: Path
) -> None:
    origins["m"] = MemoryOrigin({"a.txt": b"alpha\n"})

    async def body(harness: Harness) -> None:
        results: list[bytes] = []

        async def reader() -> None:
            results.append(await harness.read_file("a.txt"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert results == [] and harness.state.gate.state is GateState.PREPARING
            # the root answers at once: stat and the state attribute never hang
            assert stat.S_ISDIR((await harness.getattr(ROOT_INODE)).st_mode)
            assert await harness.getxattr("", "user.artifactfs.state") == b"preparing"
            await harness.prepare()
        assert results == [b"alpha\n"]

    run_mounted("mem://m", tmp_path, body, prepare=False)


def test_a_failed_prepare_answers_eio_with_the_reason(
    origins: dict[str, MemoryOrigin], tmp_path: Path
) -> None:
    origins["m"] = MemoryOrigin({"a.txt": b"alpha\n"}, prepare_error="the origin is down")

    async def body(harness: Harness) -> None:
        errnos: list[int] = []

        async def reader() -> None:
            with pytest.raises(pyfuse3.FUSEError) as raised:
                await harness.lookup_path("a.txt")
            errnos.append(raised.value.errno)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert errnos == []
            assert await harness.prepare() is None
        assert errnos == [errno.EIO]  # the waiter, at once
        await reader()  # and a newcomer
        assert errnos == [errno.EIO, errno.EIO]
        assert await harness.getxattr("", "user.artifactfs.state") == b"failed"
        assert await harness.getxattr("", "user.artifactfs.error") == b"the origin is down"

    run_mounted("mem://m", tmp_path, body, prepare=False)


# -- refresh ------------------------------------------------------------------------------------


def test_a_refresh_keeps_an_open_file_reading_the_old_bytes(sample: Repo, tmp_path: Path) -> None:
    async def body(harness: Harness) -> None:
        fh = await harness.open("README.md")
        assert await harness.read(fh, 0, 2) == b"# "
        commit_files(sample, {"README.md": b"# changed\n"})
        prepared = await trio.to_thread.run_sync(harness.source.prepare)
        assert prepared.commit != sample.commit
        await harness.install(prepared)
        assert harness.snapshots.live_generations() == 2
        assert (ROOT_INODE, b"README.md") in harness.kernel.forgotten_entries
        assert harness.kernel.forgotten_inodes == [ROOT_INODE]
        assert await harness.read_handle(fh) == b"# sample\n"  # the old commit's bytes
        assert await harness.read_file("README.md") == b"# changed\n"
        await harness.release(fh)
        await harness.forget_all()  # the kernel lets go of the old tree: it is retired
        assert harness.snapshots.live_generations() == 1

    run_mounted(file_url(sample), tmp_path, body)


# -- the Hub source against the stand-in --------------------------------------------------------

HUB_SMALL = b'{"model_type": "bert"}\n'
HUB_LFS = bytes(range(251)) * (8 * 4177)  # ~8 MiB, LFS by size: read by HTTP Range


def test_hub_files_read_exactly_by_range(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Hub source in-process: a small file and an LFS file read exactly; a read in the
    middle of the LFS file costs a range of it, not the whole file."""
    hub.create_repo("org/tiny", {"config.json": HUB_SMALL, "weights/model.bin": HUB_LFS})
    for name, value in hub_env(hub, tmp_path).items():
        monkeypatch.setenv(name, value)

    async def body(harness: Harness) -> None:
        assert await harness.names("weights") == [b".", b"..", b"model.bin"]
        assert hub.total_bytes_served() == 0  # listing and lookups fetch nothing
        assert await harness.read_file("config.json") == HUB_SMALL
        middle = len(HUB_LFS) // 2
        fh = await harness.open("weights/model.bin")
        try:
            assert await harness.read(fh, middle, 4096) == HUB_LFS[middle : middle + 4096]
        finally:
            await harness.release(fh)
        assert 4096 <= hub.bytes_served("org/tiny", "weights/model.bin") < len(HUB_LFS)
        assert await harness.read_file("weights/model.bin") == HUB_LFS
        sha256 = hashlib.sha256(HUB_LFS).hexdigest().encode()
        assert await harness.getxattr("weights/model.bin", "user.artifactfs.sha256") == sha256
        cached = await harness.getxattr("weights/model.bin", "user.artifactfs.cached")
        assert cached == b"%d" % len(HUB_LFS)

    run_mounted("hf://org/tiny", tmp_path, body)
