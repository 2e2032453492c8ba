"""The user's huggingface_hub cache, both ways, against the Hub stand-in with the real client:
a mount takes what ``hf_hub_download`` stored instead of fetching it (verified, the user's
cache left byte for byte as it was; a damaged copy refused and fetched), and ``artifactfs
export-hf-cache`` writes a snapshot where ``hf_hub_download(..., local_files_only=True)`` finds
every file."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download, snapshot_download

from tests.conftest import hub_env
from tests.helpers.checklogs import ExpectLog
from tests.helpers.daemons import running_daemon
from tests.helpers.gitrepos import Repo
from tests.helpers.hub import HubServer
from tests.helpers.models import model_repo, with_big_file
from tests.helpers.mounts import mounted, run_cli

REPO = "org/model"
BIG = "weights/big.bin"
SHARED = "tokenizer.json"
"""Downloaded from another repository only: found in that repository's folder of the cache."""


@pytest.fixture
def model(hub: HubServer) -> dict[str, bytes]:
    files = with_big_file(model_repo(), 8)
    files["empty.txt"] = b""
    hub.create_repo(REPO, files)
    hub.create_repo("org/other", {SHARED: files[SHARED], "README.md": b"# another\n"})
    return files


def download(hub: HubServer, cache: Path, files: dict[str, bytes]) -> None:
    """What a user of huggingface_hub has: every file, downloaded by ``hf_hub_download``
    (the shared one through the other repository)."""
    for path in files:
        hf_hub_download(
            "org/other" if path == SHARED else REPO,
            path,
            endpoint=hub.endpoint,
            cache_dir=cache,
            token=False,
        )


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything about every entry below ``root`` that a change would show: type, mode,
    size, inode, link count, times, a link's target, a file's sha256."""
    state: dict[str, tuple[object, ...]] = {}
    for directory, names, files in os.walk(root):
        for name in names + files:
            path = Path(directory) / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                content: object = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = None
            state[str(path.relative_to(root))] = (
                info.st_mode, info.st_size, info.st_ino, info.st_nlink, info.st_mtime_ns,
                info.st_ctime_ns, content,
            )  # fmt: skip
    return state


def read_all(mnt: Path, files: dict[str, bytes]) -> None:
    """Read every file in another process (a reader in this one could starve the stand-in's
    threads) and compare it with what the Hub holds."""
    for path, data in files.items():
        got = subprocess.run(["cat", str(mnt / path)], capture_output=True, check=True, timeout=60)
        assert got.stdout == data, path


def resolves(hub: HubServer) -> list[tuple[str, str, str | None]]:
    return [request for request in hub.requests if "/resolve/" in request[1]]


def test_a_mount_reads_every_file_from_the_hf_cache_without_a_download(
    hub: HubServer, model: dict[str, bytes], tmp_path: Path, mnt: Path, home: Path
) -> None:
    cache = tmp_path / "hf-cache"
    download(hub, cache, model)
    before = tree_state(cache)
    hub.clear_counters()
    env = {**hub_env(hub, tmp_path), "HF_HUB_CACHE": str(cache)}
    with mounted(f"hf://{REPO}", mnt, home, env=env) as mount:
        read_all(mnt, model)
        assert hub.total_bytes_served() == 0
        assert resolves(hub) == []
        assert mount.xattr("bytes_fetched") == "0"
        assert mount.xattr("cached", mnt / BIG) == str(len(model[BIG]))
        taken = re.findall(r"from the huggingface_hub cache by (\w+)", mount.log())
        # every file but the empty one (the kernel does not ask to read a file of size 0)
        assert len(taken) == len(model) - 1, taken
    assert tree_state(cache) == before  # not a byte, mode, time or link count changed
    for path, data in model.items():
        digest = hashlib.sha256(data).hexdigest()
        kept = home / "cas" / "sha256" / digest[:2] / digest
        if path == BIG:  # LFS: kept under its sha256, a file of its own (no hard link)
            info = kept.stat()
            assert info.st_nlink == 1 and stat.S_IMODE(info.st_mode) == 0o444
            assert kept.read_bytes() == data


def test_the_hf_cache_can_be_turned_off(
    hub: HubServer, model: dict[str, bytes], tmp_path: Path, mnt: Path, home: Path
) -> None:
    cache = tmp_path / "hf-cache"
    download(hub, cache, {BIG: model[BIG]})
    hub.clear_counters()
    env = {**hub_env(hub, tmp_path), "HF_HUB_CACHE": str(cache), "ARTIFACTFS_HF_CACHE": "off"}
    with mounted(f"hf://{REPO}", mnt, home, env=env):
        read_all(mnt, {BIG: model[BIG]})
        assert hub.bytes_served(REPO, BIG) == len(model[BIG])


def test_a_damaged_blob_in_the_hf_cache_is_refused_and_fetched(
    hub: HubServer,
    model: dict[str, bytes],
    tmp_path: Path,
    mnt: Path,
    home: Path,
    expect_log: ExpectLog,
) -> None:
    cache = tmp_path / "hf-cache"
    download(hub, cache, model)
    blobs = cache / f"models--{REPO.replace('/', '--')}" / "blobs"
    big = blobs / hashlib.sha256(model[BIG]).hexdigest()
    config = blobs / hub.file(REPO, "config.json").oid  # small files: named by git blob id
    tokenizer = blobs / hub.file(REPO, "tokenizer_config.json").oid
    with open(big, "r+b") as damaged:  # a flipped byte, the right size
        damaged.seek(5 << 20)
        byte = damaged.read(1)
        damaged.seek(5 << 20)
        damaged.write(bytes([byte[0] ^ 0xFF]))
    config.write_bytes(config.read_bytes().replace(b"bert", b"BERT"))  # same size
    os.truncate(tokenizer, tokenizer.stat().st_size - 1)  # the wrong size
    for name in (big.name, config.name, tokenizer.name):
        expect_log(
            rf"^the huggingface_hub cache's copy of \S+:{name} is damaged \(.*\): not used"
            r" \(left as it is: .*\); fetching it from the Hub$",
            level="WARNING",
            required=True,
        )
    before = tree_state(cache)
    hub.clear_counters()
    env = {**hub_env(hub, tmp_path), "HF_HUB_CACHE": str(cache)}
    with mounted(f"hf://{REPO}", mnt, home, env=env):
        read_all(mnt, model)
        damaged = {BIG, "config.json", "tokenizer_config.json"}
        for path, data in model.items():
            assert hub.bytes_served(REPO, path) == (len(data) if path in damaged else 0), path
    assert tree_state(cache) == before


def test_export_hf_cache_then_hf_hub_download_offline_finds_every_file(
    hub: HubServer, model: dict[str, bytes], tmp_path: Path, home: Path
) -> None:
    cache = tmp_path / "exported"
    env = {**hub_env(hub, tmp_path), "HF_HUB_CACHE": str(cache)}
    commit = hub.sha(REPO)
    with running_daemon(home, env=env) as artifactfs:
        artifactfs.ok("add-repo", "m", f"hf://{REPO}")
        out = artifactfs.ok("export-hf-cache", "m", env={"HF_HUB_CACHE": str(cache)})
        assert f"exported {len(model)} file(s) of m" in out, out
        assert f"at {commit} as main: {len(model)} written" in out, out
        for path, data in model.items():  # each fetched once, by the worker, for the export
            assert hub.bytes_served(REPO, path) == len(data), path
        again = artifactfs.ok("export-hf-cache", "m", env={"HF_HUB_CACHE": str(cache)})
        assert f": 0 written, {len(model)} there already" in again, again
        other = tmp_path / "elsewhere"
        hub.clear_counters()
        elsewhere = artifactfs.ok("export-hf-cache", "m", "--cache-dir", str(other))
        assert f"{len(model)} written" in elsewhere and hub.requests == [], elsewhere
        artifactfs.ok("unmount", "m")  # everything is stored: no worker is needed
        third = artifactfs.ok("export-hf-cache", "m", "--cache-dir", str(tmp_path / "third"))
        assert f"{len(model)} written" in third and hub.requests == [], third
        # a ref the cache has already (perhaps a newer commit) is never moved
        newer = tmp_path / "newer"
        ref = newer / f"models--{REPO.replace('/', '--')}" / "refs" / "main"
        ref.parent.mkdir(parents=True)
        ref.write_text("f" * 40)
        kept = artifactfs.cli("export-hf-cache", "m", "--cache-dir", str(newer))
        assert kept.returncode == 0 and " as main" not in kept.stdout, kept.stdout
        assert f"already names {'f' * 40}: left as it is" in kept.stderr, kept.stderr
        assert ref.read_text() == "f" * 40
    hub.clear_counters()
    for root in (cache, other):
        for path, data in model.items():
            for revision in ("main", commit):
                found = hf_hub_download(
                    REPO,
                    path,
                    revision=revision,
                    cache_dir=root,
                    endpoint=hub.endpoint,
                    local_files_only=True,
                )
                assert Path(found).read_bytes() == data, (root, path)
    for root in (cache, other):
        folder = Path(snapshot_download(REPO, cache_dir=root, local_files_only=True))
        assert folder.name == commit
        for path, data in model.items():
            assert (folder / path).read_bytes() == data, (root, path)
    assert hub.requests == []
    folder = cache / f"models--{REPO.replace('/', '--')}"
    blobs = sorted(p.name for p in (folder / "blobs").iterdir())
    assert all(re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", name) for name in blobs), blobs
    for blob in (folder / "blobs").iterdir():  # whole files of their own, never links to the CAS
        assert stat.S_ISREG(blob.lstat().st_mode) and blob.stat().st_nlink == 1
    assert (folder / "refs" / "main").read_text() == commit


def test_export_hf_cache_bad_input_is_one_line_and_exit_2(
    hub: HubServer, model: dict[str, bytes], sample: Repo, tmp_path: Path, home: Path
) -> None:
    with running_daemon(home, env=hub_env(hub, tmp_path)) as artifactfs:
        unknown = run_cli("export-hf-cache", "nope", home=home)
        assert unknown.returncode == 2, unknown
        assert unknown.stderr == "artifactfs: no repository named 'nope' is registered\n"
        artifactfs.ok("add-repo", "g", str(sample.path))
        git = run_cli("export-hf-cache", "g", home=home)
        assert git.returncode == 2, git
        assert git.stderr.count("\n") == 1 and "not a Hugging Face repository" in git.stderr
        artifactfs.ok("add-repo", "m", f"hf://{REPO}")
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory\n")
        result = run_cli("export-hf-cache", "m", "--cache-dir", str(blocker), home=home)
        assert result.returncode == 2, result
        assert result.stderr.count("\n") == 1 and "not a directory" in result.stderr, result
        assert blocker.read_text() == "not a directory\n"


def test_only_regular_files_of_the_right_content_are_taken(tmp_path: Path) -> None:
    """In process, no mount: a FIFO where a blob should be is passed by at once (never
    waited on); a blob that is a link (huggingface_hub's shared Xet store makes them) is
    followed and its content taken; nothing in the cache changes."""
    from artifactfs.cas import ContentStore, Digest
    from artifactfs.cas.digests import SHA256
    from artifactfs.sources.hub.hf_cache import HubCache
    from artifactfs.sources.hub.spec import HubSourceSpec

    data = b"weights" * 1000
    digest = Digest(SHA256, hashlib.sha256(data).hexdigest())
    cache = tmp_path / "hf"
    own = cache / "models--org--m" / "blobs"
    own.mkdir(parents=True)
    os.mkfifo(own / digest.hex)
    shared = cache / "blobs" / digest.hex[:2] / digest.hex
    shared.parent.mkdir(parents=True)
    shared.write_bytes(data)
    linked = cache / "models--org--other" / "blobs" / digest.hex
    linked.parent.mkdir(parents=True)
    linked.symlink_to(os.path.relpath(shared, linked.parent))
    before = tree_state(cache)
    store = ContentStore(tmp_path / "cas")
    assert HubCache(HubSourceSpec("model", "org/m", None), cache).take(store, digest, len(data))
    assert store.path_of(digest).read_bytes() == data
    assert tree_state(cache) == before
