"""A fleet shares one store: git mounts of two state homes (two nodes) behind one S3 tier.

Real mounts through the kernel, a real ``git daemon`` (whose packet trace tells which blobs
the origin was asked for) and moto's S3 server over HTTP (tests/helpers/s3.py). What the tests
show: a node reads what another fetched without asking the origin; a cold node mounts a pinned
commit with the origin down (snapshot and bytes from the tier); a damaged object in the tier
is never served; a tier that is down or hangs never fails a read; racing uploads of one blob
leave one object that both nodes know of; ``artifactfs tier status|push``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifactfs.cas import GIT_SHA1, ContentStore
from artifactfs.tier.keys import blob_key as tier_blob_key
from tests.helpers.checklogs import ExpectLog
from tests.helpers.gitrepos import Repo, Symlink, make_repo
from tests.helpers.mounts import mounted, run_cli
from tests.helpers.ports import free_port
from tests.helpers.s3 import S3Server, running_s3
from tests.helpers.servers import GitDaemon, GitProxy
from tests.helpers.waiting import wait_for

BUCKET = "fleet"
PREFIX = "nodes"


def _files() -> dict[str, bytes]:
    files = {f"dir{i % 5}/sub{i % 2}/file{i:02}.txt": os.urandom(100 + 997 * i) for i in range(30)}
    files["dir0/large.bin"] = os.urandom(700 * 1024)
    return files


FILES = _files()
LINK = "dir1/to-first"


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    with running_s3(tmp_path / "moto-server.txt") as server:
        server.make_bucket(BUCKET)
        yield server


@pytest.fixture
def fleet(repos: Path) -> Repo:
    return make_repo(repos, "fleet.git", {**FILES, LINK: Symlink(b"../dir0/sub0/file00.txt")})


def tier_env(s3: S3Server, endpoint: str | None = None, timeout: float = 5) -> dict[str, str]:
    return {
        "ARTIFACTFS_TIER_URL": f"s3://{BUCKET}/{PREFIX}",
        "ARTIFACTFS_TIER_ENDPOINT": endpoint or s3.endpoint,
        "ARTIFACTFS_TIER_TIMEOUT": str(timeout),
        **s3.env(),
    }


def read_all(mnt: Path) -> None:
    """Every file's bytes as git has them (and the symlink's target)."""
    for path, data in FILES.items():
        assert (mnt / path).read_bytes() == data, path
    assert os.readlink(mnt / LINK) == "../dir0/sub0/file00.txt"


def status(home: Path, env: dict[str, str]) -> dict[str, object]:
    result = run_cli("tier", "status", "--json", home=home, env=env)
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def wait_held(home: Path, env: dict[str, str], count: int = len(FILES) + 1) -> None:
    """Until the node's write-behind has uploaded (or found in the tier) ``count`` blobs:
    every file and the symlink's blob. (The backlog alone can look empty for a moment: the
    store's table is written every few seconds.)"""
    wait_for(lambda: status(home, env)["held"] == count, 60, f"{count} blobs held", 0.2)
    assert status(home, env)["backlog"] == 0


def wait_uploaded(home: Path, env: dict[str, str], s3: S3Server) -> None:
    """Until the node's write-behind has emptied its backlog and its snapshot is shared."""
    wait_held(home, env)
    wait_for(lambda: s3.objects(BUCKET, f"{PREFIX}/snapshots/"), 30, "the shared snapshot")


def blob_key(repo: Repo, path: str) -> str:
    oid = repo.blob_id(path)
    return f"{PREFIX}/blobs/git-sha1/{oid[:2]}/{oid}"


def blobs_asked(daemon: GitDaemon, repo: Repo, since: int) -> set[str]:
    return set(daemon.wanted(since)) - {repo.commit}


def node_a_shares(
    daemon: GitDaemon, fleet: Repo, s3: S3Server, tmp_path: Path, env: dict[str, str]
) -> None:
    """Node A mounts, reads everything, and the tier ends up holding all of it."""
    home = tmp_path / "node-a"
    with mounted(daemon.url("fleet.git"), tmp_path / "mnt-a", home, env=env):
        read_all(tmp_path / "mnt-a")
        wait_uploaded(home, env, s3)
    report = status(home, env)
    assert report["held"] == len(FILES) + 1  # and the symlink's blob
    assert "test-secret-key" not in json.dumps(report)
    assert report["tier"] == f"s3://{BUCKET}/{PREFIX} at {s3.endpoint}"


def test_second_node_reads_from_the_tier_not_the_origin(
    daemon: GitDaemon, fleet: Repo, s3: S3Server, tmp_path: Path
) -> None:
    env = tier_env(s3)
    node_a_shares(daemon, fleet, s3, tmp_path, env)
    keys = s3.objects(BUCKET, f"{PREFIX}/blobs/")
    assert len(keys) == len(FILES) + 1
    assert s3.read(BUCKET, blob_key(fleet, "dir0/large.bin")) == FILES["dir0/large.bin"]

    mark = daemon.trace_mark()
    home_b = tmp_path / "node-b"
    with mounted(daemon.url("fleet.git"), tmp_path / "mnt-b", home_b, env=env):
        read_all(tmp_path / "mnt-b")
    assert blobs_asked(daemon, fleet, mark) == set()
    report = status(home_b, env)
    assert report["held"] == len(FILES) + 1  # all read from the tier, the symlink's too
    assert report["backlog"] == 0


def test_a_shared_directory_as_the_tier(daemon: GitDaemon, fleet: Repo, tmp_path: Path) -> None:
    """``file:///PATH`` (NFS, a shared volume): the same fleet, no S3."""
    tier = tmp_path / "shared-volume"
    env = {"ARTIFACTFS_TIER_URL": f"file://{tier}"}
    home_a = tmp_path / "node-a"
    with mounted(daemon.url("fleet.git"), tmp_path / "mnt-a", home_a, env=env):
        read_all(tmp_path / "mnt-a")
        wait_held(home_a, env)
        wait_for(lambda: list((tier / "snapshots").glob("*/*")), 30, "the shared snapshot")
    oid = fleet.blob_id("dir0/large.bin")
    assert (tier / "blobs" / "git-sha1" / oid[:2] / oid).read_bytes() == FILES["dir0/large.bin"]

    mark = daemon.trace_mark()
    with mounted(daemon.url("fleet.git"), tmp_path / "mnt-b", tmp_path / "node-b", env=env):
        read_all(tmp_path / "mnt-b")
    assert blobs_asked(daemon, fleet, mark) == set()


def test_clone_on_a_second_node_reads_from_the_tier(
    daemon: GitDaemon, fleet: Repo, s3: S3Server, tmp_path: Path
) -> None:
    env = tier_env(s3)
    node_a_shares(daemon, fleet, s3, tmp_path, env)
    mark = daemon.trace_mark()
    dest = tmp_path / "clone"
    result = run_cli("clone", daemon.url("fleet.git"), str(dest), home=tmp_path / "node-b", env=env)
    assert result.returncode == 0, result.stderr
    read_all(dest)
    assert blobs_asked(daemon, fleet, mark) == set()


def test_cold_node_mounts_a_pinned_commit_with_the_origin_down(
    daemon: GitDaemon, fleet: Repo, s3: S3Server, tmp_path: Path, expect_log: ExpectLog
) -> None:
    env = tier_env(s3)
    node_a_shares(daemon, fleet, s3, tmp_path, env)
    daemon.stop()
    expect_log(r"its snapshot came from the tier", level="WARNING", required=True)

    home_b = tmp_path / "node-b"
    mnt = tmp_path / "mnt-b"
    pinned = ("--ref", fleet.commit, "--read-only")  # a workspace needs the origin's trees
    with mounted(daemon.url("fleet.git"), mnt, home_b, *pinned, env=env) as mount:
        assert mount.xattr("commit") == fleet.commit
        assert sorted(os.listdir(mnt)) == [f"dir{i}" for i in range(5)]
        read_all(mnt)
        assert "from the tier" in mount.log()
    report = status(home_b, env)
    assert report["held"] == len(FILES) + 1 and report["backlog"] == 0  # the symlink's too


def test_cold_node_makes_a_workspace_of_a_pinned_commit_with_the_origin_down(
    daemon: GitDaemon, fleet: Repo, s3: S3Server, tmp_path: Path, expect_log: ExpectLog
) -> None:
    """A writable mount needs the commit's trees too: the pack node A kept comes through the
    tier with the snapshot."""
    env = tier_env(s3)
    node_a_shares(daemon, fleet, s3, tmp_path, env)

    def packs() -> list[str]:
        return [k for k in s3.objects(BUCKET, f"{PREFIX}/snapshots/") if k.endswith(".pack")]

    wait_for(packs, 30, "the shared pack")
    daemon.stop()
    expect_log(r"its snapshot came from the tier", level="WARNING", required=True)

    mnt = tmp_path / "mnt-b"
    with mounted(daemon.url("fleet.git"), mnt, tmp_path / "node-b", "--ref", fleet.commit, env=env):
        read_all(mnt)
        head = subprocess.run(
            ["git", "-C", str(mnt), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        assert head.stdout.strip() == fleet.commit, head.stderr
        (mnt / "dir0" / "new.txt").write_bytes(b"written on node b\n")
        assert (mnt / "dir0" / "new.txt").read_bytes() == b"written on node b\n"


def test_offline_cold_node_mounts_a_pinned_commit_from_the_tier(
    daemon: GitDaemon, fleet: Repo, s3: S3Server, tmp_path: Path
) -> None:
    """``--offline`` sends nothing to the origin; the tier is not the origin."""
    env = tier_env(s3)
    node_a_shares(daemon, fleet, s3, tmp_path, env)
    mark = daemon.trace_mark()
    pinned = ("--ref", fleet.commit, "--read-only", "--offline")
    home_b = tmp_path / "node-b"
    with mounted(daemon.url("fleet.git"), tmp_path / "mnt-b", home_b, *pinned, env=env):
        read_all(tmp_path / "mnt-b")
    offline_clone = ("clone", "--offline", "--ref", fleet.commit, daemon.url("fleet.git"))
    dest = tmp_path / "clone"
    cloned = run_cli(*offline_clone, str(dest), home=tmp_path / "node-c", env=env)
    assert cloned.returncode == 0, cloned.stderr
    read_all(dest)
    assert daemon.packets(mark) == []


def test_what_others_shared_is_checked_with_the_origin_down(
    daemon: GitDaemon, fleet: Repo, s3: S3Server, tmp_path: Path, expect_log: ExpectLog
) -> None:
    """The bucket is shared. A damaged snapshot in it is refused, and the listing is indexed
    again from the commit's trees (named by their ids from the pinned commit down): the
    mount is right, its sizes learned on demand. With the pack damaged too, nothing from the
    tier is used and the prepare fails with the origin's reason (the tampering cases of a
    snapshot alone: tests/test_3_tier_snapshots.py)."""
    env = tier_env(s3)
    node_a_shares(daemon, fleet, s3, tmp_path, env)

    def shared(pack: bool) -> list[str]:
        keys = s3.objects(BUCKET, f"{PREFIX}/snapshots/")
        return [k for k in keys if k.endswith(".pack") == pack]

    (pack,) = wait_for(lambda: shared(True), 30, "the shared pack")
    (listing,) = shared(False)
    s3.write(BUCKET, listing, b"SQLite format 3\0" + b"\xff" * 4096)
    daemon.stop()
    expect_log(r"the tier's snapshot of .* is refused", level="ERROR", required=True)
    expect_log(r"its snapshot came from the tier", level="WARNING", required=True)
    pinned = ("--ref", fleet.commit, "--read-only", "--keep-failed")
    with mounted(
        daemon.url("fleet.git"), tmp_path / "mnt-b", tmp_path / "node-b", *pinned, env=env
    ):
        read_all(tmp_path / "mnt-b")
        assert os.stat(tmp_path / "mnt-b" / "dir0" / "large.bin").st_size == len(
            FILES["dir0/large.bin"]
        )

    s3.write(BUCKET, pack, b"PACK" + b"\0" * 4096)
    expect_log(r"the tier's git-\w+\.pack is refused", level="ERROR", required=True)
    expect_log(r"^cannot prepare \S+: connection refused$", level="ERROR", required=True)
    with mounted(
        daemon.url("fleet.git"), tmp_path / "mnt-c", tmp_path / "node-c", *pinned, ready=False,
        env=env,
    ) as mount:  # fmt: skip
        wait_for(lambda: mount.state() == "failed", 30, "prepare to fail")
        assert mount.xattr("error") == "connection refused"
    assert not list((tmp_path / "node-c" / "snapshots").glob("*"))


def test_a_damaged_object_in_the_tier_is_never_served(
    daemon: GitDaemon, fleet: Repo, s3: S3Server, tmp_path: Path, expect_log: ExpectLog
) -> None:
    env = tier_env(s3)
    node_a_shares(daemon, fleet, s3, tmp_path, env)
    damaged = "dir3/sub1/file03.txt"
    s3.write(BUCKET, blob_key(fleet, damaged), b"not what git has" * 10)
    expect_log(r"the tier's copy of .* is damaged", level="ERROR", required=True)

    mark = daemon.trace_mark()
    with mounted(daemon.url("fleet.git"), tmp_path / "mnt-b", tmp_path / "node-b", env=env):
        read_all(tmp_path / "mnt-b")
    assert blobs_asked(daemon, fleet, mark) == {fleet.blob_id(damaged)}


@pytest.mark.parametrize("fault", ["down", "hung"])
def test_a_tier_down_or_hung_never_fails_a_read(
    fault: str,
    daemon: GitDaemon,
    fleet: Repo,
    s3: S3Server,
    tmp_path: Path,
    expect_log: ExpectLog,
) -> None:
    """The test's timeout (pytest.ini) is the bound: every read comes from the origin after
    at most a few of the tier's 1 s timeouts, never one per file. A down tier fails at
    prepare already (the symlink's blob); a hung one is held from the first read on."""
    proxy = GitProxy(s3.port) if fault == "hung" else None
    port = proxy.port if proxy is not None else free_port()
    env = tier_env(s3, endpoint=f"http://127.0.0.1:{port}", timeout=1)
    expect_log(r"the tier failed .*; the origin is used", level="WARNING", required=True)
    expect_log(r"upload of .* to the tier failed", level="WARNING")
    expect_log(r"could not share the (snapshot|pack) of", level="WARNING")
    try:
        mark = daemon.trace_mark()
        with mounted(daemon.url("fleet.git"), tmp_path / "mnt", tmp_path / "home", env=env):
            if proxy is not None:
                proxy.hold()
            read_all(tmp_path / "mnt")
        assert blobs_asked(daemon, fleet, mark) >= {fleet.blob_id(p) for p in FILES}
    finally:
        if proxy is not None:
            proxy.stop()


def test_racing_uploads_of_one_blob_leave_one_object(
    daemon: GitDaemon, fleet: Repo, s3: S3Server, tmp_path: Path
) -> None:
    env = tier_env(s3)
    homes = [tmp_path / "node-a", tmp_path / "node-b"]
    with (
        mounted(daemon.url("fleet.git"), tmp_path / "mnt-a", homes[0], env=env),
        mounted(daemon.url("fleet.git"), tmp_path / "mnt-b", homes[1], env=env),
    ):
        start = threading.Barrier(2)
        failures: list[BaseException] = []

        def read(mnt: Path) -> None:
            try:
                start.wait(10)
                read_all(mnt)
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        readers = [threading.Thread(target=read, args=(tmp_path / m,)) for m in ("mnt-a", "mnt-b")]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(60)
        assert not failures, failures
        for home in homes:
            wait_held(home, env)
        total = len(FILES) + 1
        wait_for(lambda: sum(map(uploaded_by, homes)) >= total, 30, "the upload reports")
    keys = s3.objects(BUCKET, f"{PREFIX}/blobs/")
    assert len(keys) == len(FILES) + 1
    for path, data in FILES.items():
        assert s3.read(BUCKET, blob_key(fleet, path)) == data
    # create-only puts: each blob was created by exactly one node; a node that lost a race
    # (or read the blob from the tier) did not count it as its upload
    assert sum(uploaded_by(home) for home in homes) == len(FILES) + 1


def uploaded_by(home: Path) -> int:
    """The blobs a node's worker created in the tier (its last ``tier: N uploaded`` line)."""
    log = "".join(p.read_text() for p in (home / "run" / "logs").glob("*.log"))
    counts = re.findall(r"tier: (\d+) uploaded", log)
    return int(counts[-1]) if counts else 0


def test_tier_status_and_push(daemon: GitDaemon, fleet: Repo, s3: S3Server, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with mounted(daemon.url("fleet.git"), tmp_path / "mnt", home):  # no tier: a backlog
        read_all(tmp_path / "mnt")
    env = tier_env(s3)
    before = status(home, env)
    assert before["held"] == 0 and before["backlog"] == len(FILES) + 1
    assert before["backlog_bytes"] == sum(map(len, FILES.values())) + len(
        b"../dir0/sub0/file00.txt"
    )
    shown = run_cli("tier", "status", home=home, env=env)
    assert shown.returncode == 0 and f"{len(FILES) + 1} blobs" in shown.stdout
    assert "test-secret-key" not in shown.stdout + shown.stderr

    dead = tier_env(s3, endpoint=f"http://127.0.0.1:{free_port()}", timeout=1)
    refused = run_cli("tier", "push", home=home, env=dead)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "cannot be reached" in refused.stderr
    assert "test-secret-key" not in refused.stderr

    pushed = run_cli("tier", "push", home=home, env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.startswith(f"pushed {len(FILES) + 1} blobs")
    after = status(home, env)
    assert after["held"] == len(FILES) + 1 and after["backlog"] == 0
    assert len(s3.objects(BUCKET, f"{PREFIX}/blobs/")) == len(FILES) + 1
    again = run_cli("tier", "push", home=home, env=env)
    assert again.returncode == 0 and again.stdout.startswith("pushed 0 blobs")
    # a blob in the store with no record in its table (a worker killed before it wrote its
    # records, or one that has not written them yet): push walks the store and sends it too
    unrecorded = b"published, never recorded\n"
    digest = ContentStore(home / "cas").add_bytes(GIT_SHA1, unrecorded)
    late = run_cli("tier", "push", home=home, env=env)
    assert late.returncode == 0 and late.stdout.startswith("pushed 1 blob "), late.stdout
    assert s3.read(BUCKET, f"{PREFIX}/{tier_blob_key(digest)}") == unrecorded


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("tier", "status"), {"ARTIFACTFS_TIER_URL": ""}),
        (("tier", "push"), {"ARTIFACTFS_TIER_URL": ""}),
        (("tier", "status"), {"ARTIFACTFS_TIER_URL": "ftp://somewhere"}),
        (("tier", "push"), {"ARTIFACTFS_TIER_URL": "s3://x"}),
        (("tier", "status"), {"ARTIFACTFS_TIER_URL": "file:///t", "ARTIFACTFS_TIER_TIMEOUT": "x"}),
        (("tier", "frobnicate"), {}),
        (("tier",), {}),
    ],
)
def test_tier_bad_input_is_one_line(args: tuple[str, ...], env: dict[str, str], home: Path) -> None:
    result = run_cli(*args, home=home, env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(("artifactfs", "usage"))
