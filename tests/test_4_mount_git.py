"""A git repository through a real mount: every byte, mode and name as git has them; lazily."""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from artifactfs.mount.mountpoints import mount_at
from artifactfs.sources.git.source import GIT_READ_AHEAD_KIB
from tests.conftest import BIG
from tests.helpers.checklogs import ExpectLog
from tests.helpers.gitrepos import Repo, Symlink, git, make_repo
from tests.helpers.mounts import errno_of, is_mounted, mounted, run_cli
from tests.helpers.servers import GitDaemon, HttpGitServer
from tests.helpers.waiting import wait_for


def tree_listing(repo: Repo, commit: str | None = None) -> dict[str, tuple[str, str]]:
    """path -> (git mode, object id) for every entry of the commit, trees included."""
    out = git("ls-tree", "-r", "-t", "-z", commit or repo.commit, cwd=repo.path)
    listing = {}
    for record in out.split(b"\0"):
        if record:
            meta, path = record.split(b"\t", 1)
            mode, _kind, oid = meta.decode().split()
            listing[path.decode()] = (mode, oid)
    return listing


@pytest.mark.parametrize("writable", [True, False], ids=["workspace", "read-only"])
def test_every_entry_matches_git(
    writable: bool, daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    with mounted(daemon.url("sample.git"), mnt, home, *([] if writable else ["--read-only"])):
        found = subprocess.run(
            ["find", str(mnt), "-mindepth", "1", "-printf", "%P\\0"],
            capture_output=True,
            check=True,
        ).stdout
        listed = sorted(p.decode() for p in found.split(b"\0") if p)
        expected = tree_listing(sample)
        assert listed == sorted([*expected, *([".git"] if writable else [])])

        for path, (mode, _oid) in expected.items():
            st = os.lstat(mnt / path)
            if mode == "040000" or mode == "160000":
                assert stat.S_ISDIR(st.st_mode), path
            elif mode == "120000":
                assert stat.S_ISLNK(st.st_mode), path
            else:
                assert stat.S_ISREG(st.st_mode), path
                assert stat.S_IMODE(st.st_mode) == (0o755 if mode == "100755" else 0o644), path
        assert os.listdir(mnt / "vendor" / "submodule") == []

        with sample.archive() as archive:
            members = [m for m in archive.getmembers() if m.name != "pax_global_header"]
            checked = 0
            for member in members:
                path = mnt / member.name.rstrip("/")
                if member.issym():
                    assert os.readlink(path) == member.linkname, member.name
                elif member.isfile():
                    data = archive.extractfile(member)
                    assert data is not None
                    assert path.read_bytes() == data.read(), member.name
                    assert os.stat(path).st_size == member.size, member.name
                    assert bool(os.stat(path).st_mode & 0o111) == bool(member.mode & 0o111)
                    checked += 1
            assert checked == 8


def test_listing_fetches_no_contents_and_cat_fetches_once(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    big_oid = sample.blob_id("data/big.bin")
    with mounted(daemon.url("sample.git"), mnt, home) as mount:
        subprocess.run(["find", str(mnt), "-ls"], capture_output=True, check=True)
        subprocess.run(["ls", "-lR", str(mnt)], capture_output=True, check=True)
        big = mnt / "data" / "big.bin"
        assert os.stat(big).st_size == len(BIG)
        assert mount.xattr("cached", big) == "0"
        assert mount.xattr("oid", big) == big_oid
        symlink_blobs = {
            sample.blob_id(f"links/{n}") for n in ("to-readme", "to-dir", "dangling", "absolute")
        }
        assert set(daemon.wanted()) - {sample.commit} == symlink_blobs

        assert big.read_bytes() == BIG
        assert mount.xattr("cached", big) == str(len(BIG))
        assert big.read_bytes() == BIG
        assert daemon.wanted().count(big_oid) == 1


def test_root_xattrs_and_status(daemon: GitDaemon, sample: Repo, mnt: Path, home: Path) -> None:
    with mounted(daemon.url("sample.git"), mnt, home) as mount:
        assert mount.xattr("state") == "ready"
        assert mount.xattr("commit") == sample.commit
        assert mount.xattr("source") == daemon.url("sample.git")
        assert mount.xattr("files") == "12"
        result = run_cli("status", str(mnt), "--json", home=home)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["state"] == "ready"
        assert report["commit"] == sample.commit
        assert report["error"] is None
        assert report["mount"] == str(mnt)
        before = report["bytes_fetched"]
        (mnt / "README.md").read_bytes()
        after = json.loads(run_cli("status", str(mnt), "--json", home=home).stdout)
        assert after["bytes_fetched"] > before


@pytest.mark.parametrize("stop", ["unmount", "fusermount", "SIGTERM", "SIGINT"])
def test_every_way_of_stopping_is_clean(
    stop: str, daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    with mounted(daemon.url("sample.git"), mnt, home) as mount:
        assert (mnt / "README.md").read_bytes() == b"# sample\n"
        if stop == "unmount":
            result = run_cli("unmount", str(mnt), home=home)
            assert result.returncode == 0, result.stderr
        elif stop == "fusermount":
            subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        else:
            mount.process.send_signal(getattr(signal, stop))
        assert mount.process.wait(20) == 0, mount.stderr()
        assert not is_mounted(mnt)
        assert "Traceback" not in mount.stderr()


def test_refs_branches_tags_and_commits(
    daemon: GitDaemon, repos: Path, mnt: Path, home: Path
) -> None:
    repo = make_repo(repos, "refs.git", {"version.txt": b"one\n"})
    first = repo.commit
    git("tag", "v1", first, cwd=repo.path)
    git("tag", "-a", "-m", "annotated", "v1-annotated", first, cwd=repo.path)
    work = repos / "work-refs"
    git("clone", "-q", str(repo.path), str(work))
    (work / "version.txt").write_bytes(b"two\n")
    git("commit", "-q", "-am", "two", cwd=work)
    git("push", "-q", "origin", "HEAD:main", "HEAD:refs/heads/other", cwd=work)
    for ref, expected in [
        (None, b"two\n"),
        ("main", b"two\n"),
        ("other", b"two\n"),
        ("v1", b"one\n"),
        ("v1-annotated", b"one\n"),
        ("refs/tags/v1", b"one\n"),
        (first, b"one\n"),
    ]:
        args = ("--ref", ref) if ref else ()
        with mounted(daemon.url("refs.git"), mnt, home, *args) as mount:
            assert (mnt / "version.txt").read_bytes() == expected, ref
            assert len(mount.xattr("commit")) == 40


def test_remount_reuses_snapshot_and_blobs(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    with mounted(daemon.url("sample.git"), mnt, home):
        assert (mnt / "data" / "big.bin").read_bytes() == BIG
    daemon.clear_trace()
    with mounted(daemon.url("sample.git"), mnt, home):
        assert (mnt / "data" / "big.bin").read_bytes() == BIG
        assert daemon.wanted() == []
        assert daemon.fetch_commands() == 0


def test_two_homes_share_nothing(daemon: GitDaemon, sample: Repo, tmp_path: Path) -> None:
    first, second = tmp_path / "home1", tmp_path / "home2"
    big_oid = sample.blob_id("data/big.bin")
    with mounted(daemon.url("sample.git"), tmp_path / "m1", first):
        assert (tmp_path / "m1" / "data" / "big.bin").read_bytes() == BIG
    daemon.clear_trace()
    with mounted(daemon.url("sample.git"), tmp_path / "m2", second):
        assert (tmp_path / "m2" / "data" / "big.bin").read_bytes() == BIG
    assert daemon.wanted().count(big_oid) == 1
    assert daemon.fetch_commands() >= 2  # the second home fetched its own trees and blob
    for state in (first, second):
        assert (state / "cas" / "git-sha1" / big_oid[:2] / big_oid).is_file()
        assert len(list((state / "snapshots").glob("git-*.sqlite"))) == 1


def test_a_pinned_commit_mounts_from_local_state_while_the_server_is_down(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path, expect_log: ExpectLog
) -> None:
    # "fetching N blob(s) failed: ..." and "read of OID failed: blob OID: ..."
    expect_log(r"failed: (blob \w+: )?connection refused$", level="ERROR", required=True)
    with mounted(daemon.url("sample.git"), mnt, home):
        assert (mnt / "data" / "big.bin").read_bytes() == BIG
    daemon.stop()
    with mounted(daemon.url("sample.git"), mnt, home, "--ref", sample.commit) as mount:
        assert (mnt / "data" / "big.bin").read_bytes() == BIG
        assert mount.xattr("commit") == sample.commit
        assert (
            errno_of(lambda: (mnt / "README.md").read_bytes()) == errno.EIO
        )  # never fetched: needs the server


def test_sha256_repositories(daemon: GitDaemon, repos: Path, mnt: Path, home: Path) -> None:
    files = {"a.txt": b"sha256 world\n", "dir/b.bin": BIG[:100_000], "link": Symlink(b"a.txt")}
    repo = make_repo(repos, "s256.git", files, object_format="sha256")
    with mounted(daemon.url("s256.git"), mnt, home) as mount:
        assert mount.xattr("commit") == repo.commit and len(repo.commit) == 64
        assert os.stat(mnt / "dir" / "b.bin").st_size == 100_000
        assert (mnt / "dir" / "b.bin").read_bytes() == BIG[:100_000]
        assert os.readlink(mnt / "link") == "a.txt"
        assert mount.xattr("oid", mnt / "a.txt") == repo.blob_id("a.txt")
    oid = repo.blob_id("dir/b.bin")
    assert (home / "cas" / "git-sha256" / oid[:2] / oid).read_bytes() == BIG[:100_000]


def test_a_size_that_does_not_match_the_content_is_never_served(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path, expect_log: ExpectLog
) -> None:
    """As if object-info had lied: the verified content wins, the wrong size is not served."""
    expect_log(
        r"^read: the server said blob \w+ has 3 bytes, but it has 9: refusing to serve it",
        level="ERROR",
        required=True,
    )
    with mounted(daemon.url("sample.git"), mnt, home):
        pass
    (snapshot,) = (home / "snapshots").glob("git-*.sqlite")
    with sqlite3.connect(snapshot) as db:
        db.execute("UPDATE entries SET size = 3 WHERE name = ?", (b"README.md",))
    pinned = ("--ref", sample.commit)
    with mounted(daemon.url("sample.git"), mnt, home, *pinned) as mount:
        assert os.stat(mnt / "README.md").st_size == 3
        assert errno_of(lambda: (mnt / "README.md").read_bytes()) == errno.EIO
        assert "the server said blob" in mount.log()
    with mounted(daemon.url("sample.git"), mnt, home, *pinned):
        assert (mnt / "README.md").read_bytes() == b"# sample\n"


def test_credentials_never_leave_the_transport(
    http_server: HttpGitServer, sample: Repo, mnt: Path, home: Path
) -> None:
    secret = "s3cret-t0ken"
    url = http_server.url("sample.git").replace("http://", f"http://user:{secret}@")
    with mounted(url, mnt, home, "-v") as mount:
        assert (mnt / "README.md").read_bytes() == b"# sample\n"
        assert mount.xattr("source") == http_server.url("sample.git").replace(
            "http://", "http://user:***@"
        )
        status = run_cli("status", str(mnt), "--json", home=home)
        assert secret not in status.stdout + status.stderr
        assert secret not in mount.stderr()
    for path in home.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_a_directory_of_thousands_lists_exactly(
    daemon: GitDaemon, repos: Path, mnt: Path, home: Path
) -> None:
    names = [f"entry-{n:05d}-{'x' * (n % 40)}" for n in range(3000)]
    make_repo(repos, "wide.git", {f"wide/{name}": b"" for name in names})
    with mounted(daemon.url("wide.git"), mnt, home):
        assert sorted(os.listdir(mnt / "wide")) == sorted(names)  # many readdir calls
        listed = subprocess.run(
            ["ls", "-f", str(mnt / "wide")], capture_output=True, text=True, check=True
        ).stdout.split()
        assert sorted(listed) == sorted([".", "..", *names])
        assert len(listed) == len(set(listed))


def read_ahead_kib(mountpoint: Path) -> int:
    entry = mount_at(mountpoint)
    assert entry is not None
    return int(Path(f"/sys/class/bdi/{entry.device}/read_ahead_kb").read_text())


def test_git_mounts_read_ahead_in_large_requests(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    with mounted(daemon.url("sample.git"), mnt, home):
        wait_for(lambda: read_ahead_kib(mnt) == GIT_READ_AHEAD_KIB, 10, "the read-ahead")
        assert (mnt / "data" / "big.bin").read_bytes() == BIG
        assert read_ahead_kib(mnt) == GIT_READ_AHEAD_KIB  # INIT did not reset it
