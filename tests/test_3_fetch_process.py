"""Blob fetches in a child process (sources/git/fetch_process.py), against real servers: what
the child publishes is reported blob by blob, with the parent's credentials; a child that dies
fails only its batch, and none outlives ``close``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from artifactfs.cas import GIT_SHA1, ContentStore, Digest
from artifactfs.sources.credentials import CredentialProvider
from artifactfs.sources.git import fetch_process
from artifactfs.sources.git.fetch_process import FetchProcess
from artifactfs.sources.git.fetcher import PartialFetch
from artifactfs.sources.git.remote import GitRemote
from tests.helpers.gitrepos import Repo, make_repo
from tests.helpers.servers import GitDaemon, GitProxy, HttpGitServer
from tests.helpers.sources import git_remote
from tests.helpers.waiting import wait_for

FILES = {f"dir{i % 5}/file{i:03}.txt": f"file {i}\n".encode() * (i + 1) for i in range(150)}
TOKEN = "tok-fetch-process-5c1d"


@pytest.fixture
def many(repos: Path) -> Repo:
    return make_repo(repos, "many.git", FILES)


def source_for(
    url: str, tmp_path: Path, credentials: CredentialProvider | None = None
) -> GitRemote:
    return git_remote(url, tmp_path, credentials=credentials)


def children_of(process: FetchProcess) -> list[int]:
    return [child.pid for child in process._children]


def test_a_batch_is_published_by_the_child_and_reported_blob_by_blob(
    daemon: GitDaemon, many: Repo, tmp_path: Path
) -> None:
    cas = ContentStore(tmp_path / "cas")
    source = source_for(daemon.url("many.git"), tmp_path)
    process = FetchProcess(source)
    wanted = {many.blob_id(name): len(content) for name, content in FILES.items()}
    reported: list[str] = []
    try:
        assert process.fetch(wanted, reported.append) == set(wanted)
        (child,) = children_of(process)
        assert child != os.getpid()
    finally:
        process.close()
    assert sorted(reported) == sorted(wanted)  # each once
    for name, content in FILES.items():
        assert cas.path_of(Digest(GIT_SHA1, many.blob_id(name))).read_bytes() == content
    assert source.counters.blobs_fetched == len(FILES) and source.counters.bytes_received > 0
    assert not process._children
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_small_batches_stay_in_the_calling_process(
    daemon: GitDaemon, many: Repo, tmp_path: Path
) -> None:
    process = FetchProcess(source_for(daemon.url("many.git"), tmp_path))
    wanted = {many.blob_id(name): None for name in list(FILES)[: fetch_process.SMALL_BATCH - 1]}
    try:
        assert process.fetch(wanted, lambda oid: None) == set(wanted)
        assert not process._children
    finally:
        process.close()


def test_the_child_uses_the_parents_credentials(repos: Path, many: Repo, tmp_path: Path) -> None:
    server = HttpGitServer(repos, token=TOKEN)
    try:
        source = source_for(server.url("many.git"), tmp_path, CredentialProvider(token=TOKEN))
        process = FetchProcess(source)
        wanted = {many.blob_id(name): None for name in FILES}
        try:
            assert process.fetch(wanted, lambda oid: None) == set(wanted)
            for pid in children_of(process):
                assert TOKEN.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
                assert TOKEN.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
        finally:
            process.close()
        assert server.refused == 0
    finally:
        server.stop()


def test_a_refused_batch_fails_with_the_origins_reason(
    repos: Path, many: Repo, tmp_path: Path
) -> None:
    server = HttpGitServer(repos, token=TOKEN)
    try:
        source = source_for(server.url("many.git"), tmp_path)  # no token
        process = FetchProcess(source)
        try:
            refused = r"^authentication required or refused by the server \(401\); no token was"
            with pytest.raises(PartialFetch, match=refused) as failed:
                process.fetch({many.blob_id(name): None for name in FILES}, lambda oid: None)
            assert failed.value.got == set()
            assert len(children_of(process)) == 1  # the child is fine: it is kept
        finally:
            process.close()
    finally:
        server.stop()


def test_a_child_that_dies_fails_its_batch_and_is_replaced(
    daemon: GitDaemon, many: Repo, tmp_path: Path
) -> None:
    cas = ContentStore(tmp_path / "cas")
    process = FetchProcess(source_for(daemon.url("many.git"), tmp_path))
    names = list(FILES)
    first = {many.blob_id(name): None for name in names[:100]}
    try:

        def kill_the_child(oid: str) -> None:
            for pid in children_of(process):
                os.kill(pid, signal.SIGKILL)

        with pytest.raises(PartialFetch, match="the fetch process failed") as failed:
            process.fetch(first, kill_the_child)
        assert failed.value.got <= set(first)  # what it reported is in the CAS
        for oid in failed.value.got:
            assert cas.contains(Digest(GIT_SHA1, oid))
        assert not process._children
        assert process.fetch(first, lambda oid: None) == set(first)  # a new child
    finally:
        process.close()
    process.close()  # twice is fine
    with pytest.raises(Exception, match="shutting down"):
        process.fetch(first, lambda oid: None)


PARENT = """
import os, sys
from pathlib import Path
from artifactfs.sources.git.fetch_process import FetchProcess
from tests.helpers.sources import git_remote

url, where, *oids = sys.argv[1:]
process = FetchProcess(git_remote(url, Path(where)))
process.fetch(dict.fromkeys(oids), lambda oid: None)
print(*(child.pid for child in process._children), flush=True)
os._exit(0)  # no close: the child is on its own now
"""


def test_a_child_does_not_outlive_its_parent(daemon: GitDaemon, many: Repo, tmp_path: Path) -> None:
    oids = [many.blob_id(name) for name in FILES]
    ran = subprocess.run(
        [sys.executable, "-c", PARENT, daemon.url("many.git"), str(tmp_path), *oids],
        capture_output=True,
        check=True,
        timeout=60,
    )
    (child,) = (int(pid) for pid in ran.stdout.split())
    try:
        wait_for(lambda: not _alive(child), 10, "the orphaned fetch process to exit")
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited (its new parent reaps it)


def test_a_stalled_origin_fails_the_batch_after_the_io_timeout(
    daemon: GitDaemon, many: Repo, tmp_path: Path
) -> None:
    proxy = GitProxy(daemon.port, held=True)  # accepts, then answers nothing
    try:  # the worker's --io-timeout: the child gets it
        source = git_remote(daemon.url("many.git", proxy.port), tmp_path, io_timeout=1.0)
        process = FetchProcess(source)
        try:
            with pytest.raises(PartialFetch, match="timed out"):
                process.fetch({many.blob_id(name): None for name in FILES}, lambda oid: None)
        finally:
            process.close()
    finally:
        proxy.release()
        proxy.stop()


def test_an_idle_child_leaves_and_the_next_batch_starts_another(
    daemon: GitDaemon, many: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch_process, "IDLE_SECONDS", 2.0)
    monkeypatch.setattr(fetch_process, "REUSE_MARGIN", 1.0)
    process = FetchProcess(source_for(daemon.url("many.git"), tmp_path))
    names = list(FILES)
    try:
        first = {many.blob_id(name): None for name in names[:70]}
        assert process.fetch(first, lambda oid: None) == set(first)
        (child,) = children_of(process)
        wait_for(lambda: not _alive(child), 10, "the idle child to leave")
        second = {many.blob_id(name): None for name in names[70:]}
        assert process.fetch(second, lambda oid: None) == set(second)
        assert children_of(process) != [child] and len(children_of(process)) == 1
    finally:
        process.close()
