"""The Hub stand-in (tests/helpers/hub.py) is faithful enough: the real ``huggingface_hub``
client works against it unmodified, and every injected fault is observable over plain HTTP."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx2
import numpy as np
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import get_hf_file_metadata
from safetensors.numpy import load

from tests.helpers.gitrepos import git
from tests.helpers.hub import HubServer, git_blob_id, lfs_pointer, running_hub
from tests.helpers.models import (
    INDEX,
    big_file,
    model_repo,
    model_tensors,
    safetensors_header,
    shard_locations,
    tensor_locations,
    write_big_file,
)

TOKEN = "hf_test_token"
SMALL = {
    "config.json": b'{"model_type": "bert"}\n',
    "README.md": b"# small\n",
    "weights.safetensors": bytes(range(256)) * 8,  # LFS by suffix
    "sub/dir/notes.txt": b"nested\n",
}


def open_sockets() -> set[str]:
    sockets = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if (target := os.readlink(f"/proc/self/fd/{fd}")).startswith("socket:"):
                sockets.add(target)
    return sockets


@pytest.fixture
def hub() -> Iterator[HubServer]:
    """A running stand-in with ``TOKEN`` as its valid token; afterwards, no thread and no socket
    of the test may be left."""
    threads, sockets = set(threading.enumerate()), open_sockets()
    with running_hub(token=TOKEN) as server:
        yield server
    new = set(threading.enumerate()) - threads
    # tqdm's monitor (huggingface_hub's progress bars) is a process-wide singleton, not ours
    leftover = [t for t in new if t.is_alive() and t.name != "tqdm_monitor"]
    assert not leftover, f"threads left behind: {leftover}"
    assert not open_sockets() - sockets, "sockets left open"


@pytest.fixture
def api(hub: HubServer) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token=False)


@pytest.fixture
def model(hub: HubServer) -> str:
    return hub.create_repo("org/tiny", model_repo())


def download(
    hub: HubServer,
    repo_id: str,
    filename: str,
    cache: Path,
    *,
    revision: str | None = None,
    repo_type: str | None = None,
    token: str | bool = False,
) -> bytes:
    path = hf_hub_download(
        repo_id,
        filename,
        revision=revision,
        repo_type=repo_type,
        endpoint=hub.endpoint,
        cache_dir=cache,
        token=token,
    )
    return Path(path).read_bytes()


# ------------------------------------------------------------------ digests


def test_digests_are_the_hubs() -> None:
    with running_hub() as hub:
        hub.create_repo("org/d", {"a.txt": b"hello\n", "b.bin": b"\0" * 10})
        regular, lfs = hub.file("org/d", "a.txt"), hub.file("org/d", "b.bin")
    assert regular.oid == "ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object
    assert not regular.lfs and regular.sha256 is None and regular.etag == regular.oid
    sha256 = hashlib.sha256(b"\0" * 10).hexdigest()
    assert lfs.lfs and lfs.sha256 == sha256 and lfs.etag == sha256
    pointer = lfs_pointer(sha256, 10)
    assert pointer.startswith(b"version https://git-lfs.github.com/spec/v1\noid sha256:")
    assert lfs.oid == git_blob_id(pointer) and lfs.pointer_size == len(pointer)


def test_lfs_rule_size_suffix_and_override() -> None:
    with running_hub() as hub:
        hub.create_repo(
            "org/l",
            {"small.txt": b"x", "big.txt": b"x" * (1024 * 1024), "m.gguf": b"x", "forced": b"x"},
            lfs={"forced"},
        )
        kinds = {path: f.lfs for path, f in hub.files("org/l").items()}
    assert kinds == {"small.txt": False, "big.txt": True, "m.gguf": True, "forced": True}


def test_tree_and_blob_ids_match_real_git(hub: HubServer, api: HfApi, tmp_path: Path) -> None:
    files = model_repo()
    hub.create_repo("org/git", files)
    work = tmp_path / "work"
    for path, data in files.items():
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        served = hub.file("org/git", path)
        target.write_bytes(lfs_pointer(served.sha256, served.size) if served.lfs else data)
    git("init", "-q", str(work))
    git("add", "-A", cwd=work)
    tree = git("write-tree", cwd=work).decode().strip()
    expected = {}
    for line in git("ls-tree", "-r", "-t", tree, cwd=work).decode().splitlines():
        meta, path = line.split("\t")
        expected[path] = meta.split()[2]
    listed = {
        e.path: getattr(e, "blob_id", None) or getattr(e, "tree_id", None)
        for e in api.list_repo_tree("org/git", recursive=True)
    }
    assert listed == expected


# ------------------------------------------------------------------ huggingface_hub API


def test_model_info_with_files_metadata(hub: HubServer, api: HfApi, model: str) -> None:
    info = api.model_info("org/tiny", files_metadata=True)
    assert info.id == "org/tiny" and info.sha == model and info.private is False
    assert info.siblings is not None
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == set(hub.files("org/tiny"))
    for path, served in hub.files("org/tiny").items():
        sibling = siblings[path]
        assert sibling.size == served.size and sibling.blob_id == served.oid
        if served.lfs:
            assert sibling.lfs is not None
            assert sibling.lfs.sha256 == hashlib.sha256(served.read()).hexdigest()
            assert sibling.lfs.size == served.size
            assert sibling.lfs.pointer_size == served.pointer_size
        else:
            assert sibling.lfs is None and sibling.blob_id == git_blob_id(served.read())
    assert siblings["model-00001-of-00002.safetensors"].lfs is not None
    assert siblings["onnx/model.onnx"].lfs is not None
    plain = api.model_info("org/tiny")
    assert plain.siblings is not None and plain.siblings[0].size is None


def test_repo_info_at_a_branch_a_tag_and_a_sha(hub: HubServer, api: HfApi) -> None:
    first = hub.create_repo("org/revs", SMALL)
    second = hub.commit("org/revs", {"config.json": b"{}\n"})
    hub.set_branch("org/revs", "dev", first)
    hub.tag("org/revs", "v1.0", first)
    assert api.repo_info("org/revs").sha == second
    for revision in ("main", "refs/heads/main"):
        assert api.repo_info("org/revs", revision=revision).sha == second
    for revision in ("dev", "v1.0", "refs/tags/v1.0", first):
        assert api.repo_info("org/revs", revision=revision).sha == first
    refs = api.list_repo_refs("org/revs")
    assert {(b.name, b.ref, b.target_commit) for b in refs.branches} == {
        ("main", "refs/heads/main", second),
        ("dev", "refs/heads/dev", first),
    }
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1.0", first)]


def test_list_repo_tree_follows_pages(hub: HubServer, api: HfApi) -> None:
    files = {f"dir{d}/file{f}.txt": b"%d-%d" % (d, f) for d in range(4) for f in range(5)}
    files["top.txt"] = b"top"
    hub.create_repo("org/many", files)
    hub.page_size = 4
    hub.clear_counters()
    entries = list(api.list_repo_tree("org/many", recursive=True))
    assert sorted(e.path for e in entries) == sorted([*files, "dir0", "dir1", "dir2", "dir3"])
    pages = [r for r in hub.requests if "/tree/" in r[1]]
    assert len(pages) == 7  # 25 entries, 4 a page
    assert "cursor=" not in pages[0][1] and all("cursor=" in r[1] for r in pages[1:])
    top = {e.path for e in api.list_repo_tree("org/many")}
    assert top == {"dir0", "dir1", "dir2", "dir3", "top.txt"}
    assert {e.path for e in api.list_repo_tree("org/many", "dir2")} == {
        f"dir2/file{f}.txt" for f in range(5)
    }


def test_expanded_tree_and_paths_info(hub: HubServer, api: HfApi) -> None:
    first = hub.create_repo("org/exp", SMALL)
    second = hub.commit("org/exp", {"sub/dir/notes.txt": b"changed\n"})
    expanded = {e.path: e for e in api.list_repo_tree("org/exp", recursive=True, expand=True)}
    commits = {path: e.last_commit.oid for path, e in expanded.items() if e.last_commit}
    assert commits == {
        "config.json": first,
        "README.md": first,
        "weights.safetensors": first,
        "sub": second,
        "sub/dir": second,
        "sub/dir/notes.txt": second,
    }
    infos = api.get_paths_info("org/exp", ["config.json", "sub/dir", "missing.txt"])
    assert [(type(i).__name__, i.path) for i in infos] == [
        ("RepoFile", "config.json"),
        ("RepoFolder", "sub/dir"),
    ]


def test_hf_hub_download_small_and_lfs_files(hub: HubServer, model: str, tmp_path: Path) -> None:
    files = model_repo()
    for name in ("config.json", "model-00002-of-00002.safetensors", "1_Pooling/config.json"):
        assert download(hub, "org/tiny", name, tmp_path) == files[name]
    blobs = {p.name for p in (tmp_path / "models--org--tiny" / "blobs").iterdir()}
    assert hub.file("org/tiny", "config.json").oid in blobs  # regular files: the git oid
    shard = hub.file("org/tiny", "model-00002-of-00002.safetensors")
    assert shard.sha256 in blobs  # LFS files: the sha256
    assert (tmp_path / "models--org--tiny" / "refs" / "main").read_text() == model


def test_snapshot_download_whole_repo(hub: HubServer, model: str, tmp_path: Path) -> None:
    folder = Path(
        snapshot_download("org/tiny", endpoint=hub.endpoint, cache_dir=tmp_path, token=False)
    )
    assert folder.name == model
    got = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert got == model_repo()


def test_safetensors_headers_read_with_ranges(hub: HubServer, api: HfApi, model: str) -> None:
    files = model_repo()
    hub.clear_counters()
    metadata_shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for shard in metadata_shards:
        metadata = api.parse_safetensors_file_metadata("org/tiny", shard)
        length, _ = safetensors_header(files[shard])
        expected = shard_locations(shard, files[shard])
        assert {name: tuple(info.data_offsets) for name, info in metadata.tensors.items()} == {
            name: (loc.start - 8 - length, loc.end - 8 - length) for name, loc in expected.items()
        }
    assert [r[2] for r in hub.requests] == ["bytes=0-100000"] * 2
    # both shards are under 100000 bytes: each was read whole, once
    assert all(len(files[shard]) < 100000 for shard in metadata_shards)
    assert hub.total_bytes_served() == sum(len(files[shard]) for shard in metadata_shards)


def test_dataset_repos_are_separate_from_models(hub: HubServer, api: HfApi, tmp_path: Path) -> None:
    model_sha = hub.create_repo("org/same", {"data.csv": b"model\n"})
    dataset_sha = hub.create_repo(
        "org/same",
        {"data.csv": b"a,b\n1,2\n", "train/part-0.parquet": b"PAR1" * 100},
        repo_type="dataset",
    )
    assert api.dataset_info("org/same").sha == dataset_sha
    assert api.model_info("org/same").sha == model_sha
    assert {
        e.path for e in api.list_repo_tree("org/same", repo_type="dataset", recursive=True)
    } == {
        "data.csv",
        "train",
        "train/part-0.parquet",
    }
    got = download(hub, "org/same", "data.csv", tmp_path, repo_type="dataset")
    assert got == b"a,b\n1,2\n"
    assert download(hub, "org/same", "data.csv", tmp_path) == b"model\n"
    folder = snapshot_download(
        "org/same", repo_type="dataset", endpoint=hub.endpoint, cache_dir=tmp_path, token=False
    )
    assert (Path(folder) / "train" / "part-0.parquet").read_bytes() == b"PAR1" * 100
    assert ("HEAD", "/datasets/org/same/resolve/main/data.csv", None) in hub.requests


def test_legacy_single_segment_repo_id(hub: HubServer, api: HfApi, tmp_path: Path) -> None:
    sha = hub.create_repo("gpt2", SMALL)
    assert api.model_info("gpt2").sha == sha
    assert api.model_info("gpt2", revision=sha).sha == sha
    assert {e.path for e in api.list_repo_tree("gpt2")} == {
        "README.md",
        "config.json",
        "weights.safetensors",
        "sub",
    }
    assert download(hub, "gpt2", "sub/dir/notes.txt", tmp_path) == b"nested\n"


def test_a_moving_main_still_serves_old_commits(hub: HubServer, api: HfApi, tmp_path: Path) -> None:
    old = hub.create_repo("org/moving", SMALL)
    new = hub.commit("org/moving", {"config.json": b'{"v": 2}\n', "README.md": None})
    assert old != new and hub.sha("org/moving") == new
    assert download(hub, "org/moving", "config.json", tmp_path / "a") == b'{"v": 2}\n'
    assert (
        download(hub, "org/moving", "config.json", tmp_path / "b", revision=old)
        == SMALL["config.json"]
    )
    assert download(hub, "org/moving", "README.md", tmp_path / "c", revision=old) == b"# small\n"
    with pytest.raises(EntryNotFoundError):
        download(hub, "org/moving", "README.md", tmp_path / "d")
    assert api.repo_info("org/moving", revision=old).sha == old
    assert "README.md" in {e.path for e in api.list_repo_tree("org/moving", revision=old)}
    assert "README.md" not in {e.path for e in api.list_repo_tree("org/moving")}


def test_awkward_paths_and_branch_names(hub: HubServer, api: HfApi, tmp_path: Path) -> None:
    files = {
        "dir with space/na\u00efve file.txt": b"unicode\n",
        "odd/a+b&c=d?#.txt": b"reserved\n",
        "odd/100%.txt": b"percent\n",
    }
    first = hub.create_repo("org/awkward", files)
    hub.set_branch("org/awkward", "feature/x", first)
    listed = {e.path for e in api.list_repo_tree("org/awkward", "dir with space")}
    assert listed == {"dir with space/na\u00efve file.txt"}
    for path, data in files.items():
        assert download(hub, "org/awkward", path, tmp_path, revision="feature/x") == data
    infos = api.get_paths_info("org/awkward", list(files), revision="feature/x")
    assert {i.path for i in infos} == set(files)
    assert api.repo_info("org/awkward", revision="feature/x").sha == first


# ------------------------------------------------------------------ errors and access


def test_not_found_errors(hub: HubServer, api: HfApi, tmp_path: Path) -> None:
    hub.create_repo("org/here", SMALL)
    with pytest.raises(RepositoryNotFoundError) as missing:
        api.model_info("org/absent")
    assert missing.value.response.status_code == 401  # anonymous: the Hub does not say more
    assert missing.value.response.headers["X-Error-Code"] == "RepoNotFound"
    with pytest.raises(RepositoryNotFoundError) as missing:
        HfApi(endpoint=hub.endpoint, token=TOKEN).model_info("org/absent")
    assert missing.value.response.status_code == 404
    with pytest.raises(RepositoryNotFoundError):
        download(hub, "org/absent", "config.json", tmp_path)
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/here", revision="nope")
    with pytest.raises(RevisionNotFoundError):
        list(api.list_repo_tree("org/here", revision="0" * 40))
    with pytest.raises(RevisionNotFoundError):
        download(hub, "org/here", "config.json", tmp_path, revision="nope")
    with pytest.raises(RemoteEntryNotFoundError) as entry:
        download(hub, "org/here", "missing.txt", tmp_path)
    assert entry.value.response.headers["X-Repo-Commit"] == hub.sha("org/here")
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree("org/here", "no/such/dir"))
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("org/here")


def test_private_repo_needs_the_token(hub: HubServer, tmp_path: Path) -> None:
    hub.create_repo("org/secret", SMALL, private=True)
    anonymous = HfApi(endpoint=hub.endpoint, token=False)
    with pytest.raises(RepositoryNotFoundError) as refused:
        anonymous.model_info("org/secret")
    assert refused.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        download(hub, "org/secret", "config.json", tmp_path / "anon")
    with pytest.raises(HfHubHTTPError) as invalid:
        HfApi(endpoint=hub.endpoint, token="hf_wrong").model_info("org/secret")
    assert not isinstance(invalid.value, RepositoryNotFoundError)
    assert invalid.value.response.status_code == 401
    assert invalid.value.server_message == "Invalid credentials in Authorization header"
    info = HfApi(endpoint=hub.endpoint, token=TOKEN).model_info("org/secret")
    assert info.private is True
    got = download(hub, "org/secret", "weights.safetensors", tmp_path / "tok", token=TOKEN)
    assert got == SMALL["weights.safetensors"]
    assert (hub.requests[-1][1], hub.authorizations[-1][1]) == (
        "/org/secret/resolve/main/weights.safetensors",
        f"Bearer {TOKEN}",
    )
    hub.update_repo("org/secret", private=False)
    assert anonymous.model_info("org/secret").private is False


def test_gated_repo_lists_but_refuses_content(hub: HubServer, api: HfApi, tmp_path: Path) -> None:
    hub.create_repo("org/gated", SMALL, gated="manual")
    assert api.model_info("org/gated").gated == "manual"
    assert "config.json" in {e.path for e in api.list_repo_tree("org/gated")}
    with pytest.raises(GatedRepoError) as anonymous:
        download(hub, "org/gated", "config.json", tmp_path / "a")
    assert anonymous.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as authenticated:
        download(hub, "org/gated", "config.json", tmp_path / "b", token=TOKEN)
    assert authenticated.value.response.status_code == 403
    hub.grant_access("org/gated")
    got = download(hub, "org/gated", "config.json", tmp_path / "c", token=TOKEN)
    assert got == SMALL["config.json"]


# ------------------------------------------------------------------ plain HTTP: resolve


def test_resolve_headers_for_regular_and_lfs_files(hub: HubServer) -> None:
    sha = hub.create_repo("org/h", SMALL)
    regular, lfs = hub.file("org/h", "config.json"), hub.file("org/h", "weights.safetensors")
    with httpx2.Client() as client:
        head = client.head(hub.resolve_url("org/h", "config.json"))
        assert head.status_code == 200 and head.content == b""
        assert head.headers["X-Repo-Commit"] == sha
        assert head.headers["ETag"] == f'"{regular.oid}"'
        assert head.headers["Content-Length"] == str(regular.size)
        assert head.headers["Accept-Ranges"] == "bytes"
        assert "X-Linked-Etag" not in head.headers
        head = client.head(hub.resolve_url("org/h", "weights.safetensors", revision=sha))
        assert head.headers["ETag"] == head.headers["X-Linked-Etag"] == f'"{lfs.sha256}"'
        assert head.headers["X-Linked-Size"] == str(lfs.size) == head.headers["Content-Length"]
        body = client.get(hub.resolve_url("org/h", "weights.safetensors")).content
    assert body == SMALL["weights.safetensors"]
    metadata = get_hf_file_metadata(hub.resolve_url("org/h", "weights.safetensors"), token=False)
    assert (metadata.commit_hash, metadata.etag, metadata.size) == (sha, lfs.sha256, lfs.size)


@pytest.mark.parametrize(
    ("header", "status", "content_range", "start", "end"),
    [
        ("bytes=10-19", 206, "bytes 10-19/2048", 10, 20),
        ("bytes=2000-", 206, "bytes 2000-2047/2048", 2000, 2048),
        ("bytes=-16", 206, "bytes 2032-2047/2048", 2032, 2048),
        ("bytes=2040-9999", 206, "bytes 2040-2047/2048", 2040, 2048),
        ("bytes=0-0", 206, "bytes 0-0/2048", 0, 1),
        ("bytes=2048-", 416, "bytes */2048", 0, 0),
        ("bytes=0-1,5-6", 200, None, 0, 2048),
    ],
)
def test_ranges(
    hub: HubServer, header: str, status: int, content_range: str | None, start: int, end: int
) -> None:
    hub.create_repo("org/r", SMALL)
    data = SMALL["weights.safetensors"]
    with httpx2.Client() as client:
        answer = client.get(
            hub.resolve_url("org/r", "weights.safetensors"), headers={"Range": header}
        )
    assert answer.status_code == status
    assert answer.headers.get("Content-Range") == content_range
    if status != 416:
        assert answer.content == data[start:end]
        assert hub.bytes_served("org/r", "weights.safetensors") == end - start
    else:
        assert hub.bytes_served("org/r", "weights.safetensors") == 0


def test_big_lfs_file_streams_ranges_and_downloads(hub: HubServer, tmp_path: Path) -> None:
    data = big_file(64, seed=3)
    hub.create_repo("org/big", {"big.bin": data})
    url = hub.resolve_url("org/big", "big.bin")
    with httpx2.Client() as client:
        tail = client.get(url, headers={"Range": f"bytes={len(data) - 100}-"})
        assert tail.status_code == 206 and tail.content == data[-100:]
        middle = client.get(url, headers={"Range": "bytes=33554432-34603007"})  # 1 MiB at 32 MiB
        assert middle.content == data[32 << 20 : 33 << 20]
    assert hub.bytes_served("org/big", "big.bin") == 100 + (1 << 20)
    hub.clear_counters()
    # cut at 25 MiB: huggingface_hub has written two 10 MiB chunks and resumes after them
    hub.fault_cut(25 << 20)
    assert download(hub, "org/big", "big.bin", tmp_path) == data
    assert [r[2] for r in hub.requests if r[0] == "GET"] == [None, f"bytes={20 << 20}-"]
    assert hub.bytes_served("org/big", "big.bin") == (25 << 20) + len(data) - (20 << 20)


def test_files_served_from_disk(hub: HubServer, tmp_path: Path) -> None:
    on_disk = write_big_file(tmp_path / "weights.gguf", 3, seed=4)
    data = big_file(3, seed=4)
    hub.create_repo("org/disk", {"weights.gguf": on_disk})
    assert hub.file("org/disk", "weights.gguf").sha256 == hashlib.sha256(data).hexdigest()
    with httpx2.Client() as client:
        url = hub.resolve_url("org/disk", "weights.gguf")
        answer = client.get(url, headers={"Range": "bytes=5-"})
    assert answer.status_code == 206 and answer.content == data[5:]


def test_lfs_redirect_to_a_cdn_on_another_origin(tmp_path: Path) -> None:
    with running_hub(token=TOKEN, lfs_redirect=True) as hub:
        sha = hub.create_repo("org/cdn", SMALL, private=True)
        lfs = hub.file("org/cdn", "weights.safetensors")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx2.Client() as client:
            head = client.head(hub.resolve_url("org/cdn", "weights.safetensors"), headers=auth)
            assert head.status_code == 302
            assert head.headers["Location"].startswith(f"{hub.cdn_endpoint}/lfs/{lfs.sha256}?")
            assert head.headers["X-Repo-Commit"] == sha
            assert head.headers["X-Linked-Etag"] == f'"{lfs.sha256}"'
            assert head.headers["X-Linked-Size"] == str(lfs.size)
            cdn = client.get(head.headers["Location"], headers={"Range": "bytes=0-3"})
            assert cdn.status_code == 206 and cdn.content == SMALL["weights.safetensors"][:4]
            assert "X-Repo-Commit" not in cdn.headers and "X-Linked-Size" not in cdn.headers
        hub.clear_counters()
        got = download(hub, "org/cdn", "weights.safetensors", tmp_path, token=TOKEN)
        assert got == SMALL["weights.safetensors"]
        cdn_requests = [a for a in hub.authorizations if a[0].startswith("/lfs/")]
        assert cdn_requests and all(auth is None for _, auth in cdn_requests)  # not forwarded
        assert (
            download(hub, "org/cdn", "config.json", tmp_path, token=TOKEN) == SMALL["config.json"]
        )
        assert hub.bytes_served("org/cdn", "weights.safetensors") == lfs.size


# ------------------------------------------------------------------ faults


def test_fault_status_with_retry_after_then_recovery(hub: HubServer) -> None:
    hub.create_repo("org/f", SMALL)
    hub.fault_status(429, retry_after=7, times=2, path="config.json")
    with httpx2.Client() as client:
        other = client.get(hub.resolve_url("org/f", "README.md"))
        assert other.status_code == 200  # another path: untouched
        for _ in range(2):
            limited = client.get(hub.resolve_url("org/f", "config.json"))
            assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
        assert client.get(hub.resolve_url("org/f", "config.json")).status_code == 200
        hub.fault_status(503)
        assert client.get(f"{hub.endpoint}/api/models/org/f").status_code == 200  # api=False
        assert client.head(hub.resolve_url("org/f", "README.md")).status_code == 503
        hub.fault_status(500, api=True)
        assert client.get(f"{hub.endpoint}/api/models/org/f").status_code == 500
        assert client.get(f"{hub.endpoint}/api/models/org/f").status_code == 200


def test_hf_hub_download_retries_a_failed_head_once(hub: HubServer, tmp_path: Path) -> None:
    hub.create_repo("org/f", SMALL)
    hub.fault_status(503, path="config.json")
    assert download(hub, "org/f", "config.json", tmp_path) == SMALL["config.json"]
    heads = [r for r in hub.requests if r[0] == "HEAD"]
    assert len(heads) == 2


def test_fault_cut_sends_a_short_body(hub: HubServer) -> None:
    hub.create_repo("org/f", SMALL)
    hub.fault_cut(1000, path="weights.safetensors")
    received = bytearray()
    with httpx2.Client() as client:
        with client.stream("GET", hub.resolve_url("org/f", "weights.safetensors")) as answer:
            assert answer.headers["Content-Length"] == "2048"
            with pytest.raises(httpx2.RemoteProtocolError):
                for chunk in answer.iter_raw():
                    received += chunk
        assert bytes(received) == SMALL["weights.safetensors"][:1000]
        again = client.get(hub.resolve_url("org/f", "weights.safetensors"))
        assert again.content == SMALL["weights.safetensors"]
    assert hub.bytes_served("org/f", "weights.safetensors") == 1000 + 2048


def test_fault_ignore_range_answers_the_whole_file(hub: HubServer) -> None:
    hub.create_repo("org/f", SMALL)
    hub.fault_ignore_range(path="weights.safetensors")
    url = hub.resolve_url("org/f", "weights.safetensors")
    with httpx2.Client() as client:
        assert client.get(url).status_code == 200  # no Range: the fault is not used up
        ignored = client.get(url, headers={"Range": "bytes=100-199"})
        assert ignored.status_code == 200 and "Content-Range" not in ignored.headers
        assert ignored.content == SMALL["weights.safetensors"]
        honoured = client.get(url, headers={"Range": "bytes=100-199"})
        assert (
            honoured.status_code == 206
            and honoured.content == SMALL["weights.safetensors"][100:200]
        )


def test_fault_corrupt_keeps_length_and_headers(hub: HubServer, tmp_path: Path) -> None:
    hub.create_repo("org/f", SMALL)
    data = SMALL["weights.safetensors"]
    url = hub.resolve_url("org/f", "weights.safetensors")
    with httpx2.Client() as client:
        clean = client.get(url)
        hub.fault_corrupt(path="weights.safetensors")
        corrupted = client.get(url)
        hub.fault_corrupt()
        ranged = client.get(url, headers={"Range": "bytes=10-19"})
    assert corrupted.status_code == 200 and dict(corrupted.headers) == {
        **dict(clean.headers),
        "date": corrupted.headers["date"],
    }
    assert len(corrupted.content) == len(data) and corrupted.content != data
    differing = [i for i in range(len(data)) if corrupted.content[i] != data[i]]
    assert differing == [0, len(data) - 1]
    assert ranged.content == bytes([data[10] ^ 0xFF]) + data[11:19] + bytes([data[19] ^ 0xFF])
    # huggingface_hub checks sizes only: a corrupted body of the right length is kept
    hub.fault_corrupt(path="weights.safetensors")
    assert download(hub, "org/f", "weights.safetensors", tmp_path) != data


def test_fault_stall_holds_until_released(hub: HubServer) -> None:
    hub.create_repo("org/f", SMALL)
    hub.fault_stall(path="config.json")
    answers: list[httpx2.Response] = []
    finished = threading.Event()

    def fetch() -> None:
        with httpx2.Client() as client:
            answers.append(client.get(hub.resolve_url("org/f", "config.json")))
        finished.set()

    thread = threading.Thread(target=fetch)
    thread.start()
    try:
        assert hub.wait_stalled(1)
        with httpx2.Client() as client:
            assert client.get(hub.resolve_url("org/f", "README.md")).status_code == 200
        assert not finished.is_set() and hub.stalled == 1
    finally:
        hub.release()
        thread.join()
    assert answers[0].status_code == 200 and answers[0].content == SMALL["config.json"]
    assert hub.stalled == 0


def test_stop_ends_held_and_idle_connections() -> None:
    outcome: list[object] = []
    with contextlib.ExitStack() as stack:
        hub = stack.enter_context(running_hub())
        hub.create_repo("org/f", SMALL)
        idle = stack.enter_context(httpx2.Client())  # closed after the server stopped
        assert idle.get(hub.resolve_url("org/f", "README.md")).status_code == 200  # kept alive
        hub.fault_stall()

        def fetch() -> None:
            with httpx2.Client() as client:
                try:
                    outcome.append(client.get(hub.resolve_url("org/f", "config.json")).status_code)
                except httpx2.TransportError as error:
                    outcome.append(error)

        thread = threading.Thread(target=fetch)
        thread.start()
        stack.callback(thread.join)
        assert hub.wait_stalled(1)
        hub.stop()  # running_hub stops it again on exit: stop is idempotent
    assert len(outcome) == 1  # answered or dropped, but not left hanging


# ------------------------------------------------------------------ models


def test_model_repo_tensors_by_ranged_reads(hub: HubServer, model: str) -> None:
    files = model_repo()
    tensors = model_tensors()
    locations = tensor_locations(files)
    assert set(locations) == set(tensors)
    assert {loc.shard for loc in locations.values()} == {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }
    with httpx2.Client() as client:
        for name, location in locations.items():
            answer = client.get(
                hub.resolve_url("org/tiny", location.shard),
                headers={"Range": f"bytes={location.start}-{location.end - 1}"},
            )
            decoded = location.decode(answer.content)
            assert decoded.dtype == tensors[name].dtype and np.array_equal(decoded, tensors[name])
    for shard in {loc.shard for loc in locations.values()}:
        for name, array in load(files[shard]).items():
            assert np.array_equal(array, tensors[name])
    index = json.loads(files[INDEX])
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())
