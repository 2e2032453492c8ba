"""The git source against real servers, without FUSE: prepare, object-info, blob fetches."""

from __future__ import annotations

from pathlib import Path

import pytest

from artifactfs.cas import GIT_SHA1, ContentStore, Digest
from artifactfs.errors import SourceError
from artifactfs.snapshot import ROOT_INODE, SnapshotIndex
from artifactfs.sources import parse_source
from artifactfs.sources.credentials import CredentialProvider
from artifactfs.sources.git import object_info
from artifactfs.sources.git.remote import GitRemote, resolve_ref
from artifactfs.sources.git.transport import open_client
from tests.conftest import BIG
from tests.helpers.gitrepos import Repo
from tests.helpers.servers import GitDaemon, HttpGitServer
from tests.helpers.sources import git_remote


def source_for(url: str, tmp_path: Path, ref: str | None = None) -> GitRemote:
    return git_remote(url, tmp_path, ref, CredentialProvider())


@pytest.mark.parametrize("transport", ["git", "http", "file"])
def test_object_info_gives_exact_sizes(
    transport: str, daemon: GitDaemon, http_server: HttpGitServer, sample: Repo
) -> None:
    url = {
        "git": daemon.url("sample.git"),
        "http": http_server.url("sample.git"),
        "file": str(sample.path),
    }[transport]
    client, path = open_client(parse_source(url))
    big, readme = sample.blob_id("data/big.bin"), sample.blob_id("README.md")
    missing = "0" * 40
    sizes = object_info.query_sizes(client, path, [big, readme, missing])
    assert sizes == {big: len(BIG), readme: len(b"# sample\n")}


def test_object_info_replies_are_checked() -> None:
    sizes: dict[str, int] = {}
    wanted = {"a" * 40}
    object_info._read_reply([b"size", b"a" * 40 + b" 12\n"], wanted, sizes)
    assert sizes == {"a" * 40: 12}
    for bad in (
        [b"size", b"b" * 40 + b" 1"],
        [b"size", b"a" * 40 + b" -1"],
        [b"nope"],
        [b"size", b"a" * 40 + b" 99999999999999999999"],
    ):
        with pytest.raises(SourceError):
            object_info._read_reply(bad, wanted, {})


def test_prepare_indexes_the_tree_with_sizes(
    daemon: GitDaemon, sample: Repo, tmp_path: Path
) -> None:
    source = source_for(daemon.url("sample.git"), tmp_path)
    prepared = source.prepare()
    assert prepared.commit == sample.commit
    index = SnapshotIndex(prepared.path)
    try:
        data = index.lookup(ROOT_INODE, b"data")
        assert data is not None
        big = index.lookup(data.inode, b"big.bin")
        assert (
            big is not None and big.size == len(BIG) and big.oid == sample.blob_id("data/big.bin")
        )
        assert index.meta.sizes == "complete"
        assert index.meta.files == 12
    finally:
        index.close()
    assert source.counters.bytes_received > 0
    assert daemon.fetch_commands() == 2  # the tree, then the four symlink blobs
    again = source_for(daemon.url("sample.git"), tmp_path).prepare()
    assert again.path == prepared.path
    assert daemon.fetch_commands() == 2  # the snapshot of that commit already exists


def test_fetch_blobs_publishes_verified_blobs(
    daemon: GitDaemon, sample: Repo, tmp_path: Path
) -> None:
    cas = ContentStore(tmp_path / "cas")
    source = source_for(daemon.url("sample.git"), tmp_path)
    wanted = {sample.blob_id("data/big.bin"): len(BIG), sample.blob_id("README.md"): 9}
    assert source.fetch_blobs(wanted) == set(wanted)
    assert cas.path_of(Digest(GIT_SHA1, sample.blob_id("data/big.bin"))).read_bytes() == BIG
    assert source.counters.blob_fetches == 1 and source.counters.blobs_fetched == 2


def test_unknown_objects_and_refs(daemon: GitDaemon, sample: Repo, tmp_path: Path) -> None:
    assert source_for(daemon.url("sample.git"), tmp_path).fetch_blobs({"0" * 40: 1}) == set()
    with pytest.raises(SourceError, match="unknown ref 'nosuch'"):
        source_for(daemon.url("sample.git"), tmp_path, "nosuch").prepare()


def test_ref_resolution_follows_git_precedence() -> None:
    refs = {
        b"HEAD": b"1" * 40,
        b"refs/heads/main": b"2" * 40,
        b"refs/tags/main": b"3" * 40,
        b"refs/tags/v1": b"4" * 40,
        b"refs/tags/v1^{}": b"5" * 40,
    }
    assert resolve_ref(None, refs) == "1" * 40
    assert resolve_ref("main", refs) == "3" * 40  # tags win over branches, as in git
    assert resolve_ref("refs/heads/main", refs) == "2" * 40
    assert resolve_ref("v1", refs) == "5" * 40  # annotated tags are peeled
    assert resolve_ref("a" * 40, refs) == "a" * 40
    with pytest.raises(SourceError):
        resolve_ref("nope", refs)


def test_a_server_sending_more_than_announced_is_cut_off(
    daemon: GitDaemon, sample: Repo, tmp_path: Path
) -> None:
    cas = ContentStore(tmp_path / "cas")
    source = source_for(daemon.url("sample.git"), tmp_path)
    big = sample.blob_id("data/big.bin")
    with pytest.raises(SourceError, match="sent more than"):
        source.fetch_blobs({big: 1000})  # as if object-info had said 1000 bytes
    assert not cas.contains(Digest(GIT_SHA1, big))
    assert list(tmp_path.glob("pack-*")) == []
