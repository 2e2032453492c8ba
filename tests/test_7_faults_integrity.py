"""Faults: a damaged store heals. Blobs in the CAS are truncated, extended, flipped and
deleted under new and running mounts; every read gives the origin's bytes or an error, never
a wrong byte; damaged copies are quarantined (kept aside, never served) and fetched again; the
snapshot never learns a size from a damaged file; ``artifactfs verify`` finds what reads do
not look at (a flipped byte in a large blob)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import BIG, BINARY
from tests.helpers.checklogs import ExpectLog
from tests.helpers.gitrepos import Repo
from tests.helpers.mounts import mounted, run_cli
from tests.helpers.servers import GitDaemon, GitProxy


def blob_path(home: Path, repo: Repo, path: str) -> Path:
    oid = repo.blob_id(path)
    return home / "cas" / "git-sha1" / oid[:2] / oid


def damage(path: Path, how: str) -> None:
    """Change a published (read-only) blob in place, as a disk error or a hand edit would."""
    path.chmod(0o644)
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[:3])
    elif how == "extend":
        path.write_bytes(data + b"tail")
    elif how == "flip":
        flipped = bytes([data[len(data) // 2] ^ 0x01])
        path.write_bytes(data[: len(data) // 2] + flipped + data[len(data) // 2 + 1 :])
    elif how == "delete":
        path.unlink()
    if path.exists():
        path.chmod(0o444)


def quarantined(home: Path) -> list[Path]:
    return sorted((home / "cas" / "quarantine").glob("*/*"))


DAMAGED = (
    r"^blob git-sha1:\w+ in the CAS is damaged \(\d+ bytes, expected \d+\): moved to \S+,"
    r" fetching it again$"
)


def test_damaged_blobs_are_quarantined_and_fetched_again(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path, expect_log: ExpectLog
) -> None:
    expect_log(DAMAGED, level="ERROR", required=True)
    url = daemon.url("sample.git")
    expected = {"README.md": b"# sample\n", "data/binary.dat": BINARY, "data/big.bin": BIG}
    with mounted(url, mnt, home):
        for path, data in expected.items():
            assert (mnt / path).read_bytes() == data
    damage(blob_path(home, sample, "README.md"), "truncate")
    damage(blob_path(home, sample, "data/binary.dat"), "flip")
    damage(blob_path(home, sample, "data/big.bin"), "extend")  # large: caught by its size
    with mounted(url, mnt, home) as mount:
        assert os.stat(mnt / "README.md").st_size == len(b"# sample\n")  # sizes untouched
        for path, data in expected.items():
            assert (mnt / path).read_bytes() == data, path
        log = mount.log()
    assert len(quarantined(home)) == 3
    assert log.count("in the CAS is damaged") == 3
    assert "the server said" not in log  # the origin is not blamed for local damage
    for path, data in expected.items():
        assert blob_path(home, sample, path).read_bytes() == data  # healed on disk
    with mounted(url, mnt, home):  # and a later mount of the same commit is right too
        assert os.stat(mnt / "data" / "big.bin").st_size == len(BIG)
        assert (mnt / "data" / "big.bin").read_bytes() == BIG


def test_a_running_mount_heals_too(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path, expect_log: ExpectLog
) -> None:
    expect_log(DAMAGED, level="ERROR", required=True)
    url = daemon.url("sample.git")
    with mounted(url, mnt, home):
        assert (mnt / "README.md").read_bytes() == b"# sample\n"
        assert (mnt / "data" / "big.bin").read_bytes() == BIG
    with mounted(url, mnt, home):  # up, and has opened nothing yet
        damage(blob_path(home, sample, "README.md"), "flip")
        assert (mnt / "README.md").read_bytes() == b"# sample\n"
        damage(blob_path(home, sample, "data/big.bin"), "delete")
        assert (mnt / "data" / "big.bin").read_bytes() == BIG
    assert len(quarantined(home)) == 1  # the deleted one was simply fetched


def test_verify_finds_a_flipped_byte_in_a_large_blob(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    url = daemon.url("sample.git")
    with mounted(url, mnt, home):
        assert (mnt / "data" / "big.bin").read_bytes() == BIG
        assert (mnt / "README.md").read_bytes() == b"# sample\n"
    clean = run_cli("verify", "--all", "--json", home=home)
    assert clean.returncode == 0, clean.stderr
    summary = json.loads(clean.stdout)
    assert (summary["damaged"], summary["missing"]) == ([], 0)
    assert summary["checked"] >= 2 and summary["bytes"] >= len(BIG)
    damage(blob_path(home, sample, "data/big.bin"), "flip")  # same size: reads do not see it
    found = run_cli("verify", "--all", home=home)
    assert found.returncode == 1
    digest = f"git-sha1:{sample.blob_id('data/big.bin')}"
    (line,) = [line for line in found.stdout.splitlines() if line.startswith("damaged:")]
    assert line.startswith(f"damaged: {digest} (hashes to ")
    assert found.stdout.splitlines()[-1].endswith("1 damaged, 0 not in the store")
    assert len(quarantined(home)) == 1
    with mounted(url, mnt, home):
        assert (mnt / "data" / "big.bin").read_bytes() == BIG
    assert run_cli("verify", "--all", home=home).returncode == 0


def test_verify_refuses_bad_input_in_one_line(home: Path) -> None:
    both = run_cli("verify", "x", "--all", home=home)
    assert (both.returncode, both.stderr) == (
        2,
        "artifactfs: name the repositories to verify, or give --all (not both)\n",
    )
    empty = run_cli("verify", "--all", home=home)
    assert (empty.returncode, empty.stderr) == (
        2,
        f"artifactfs: no store at {home / 'cas'}: nothing to verify\n",
    )


def test_sizes_and_symlink_targets_are_never_learned_from_a_damaged_copy(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path, expect_log: ExpectLog
) -> None:
    """A server without object-info: sizes are learned from the blobs, and symlink targets are
    read from them at prepare. A damaged copy in the CAS teaches neither."""
    expect_log(r"^blob git-sha1:\w+ in the CAS is damaged", level="ERROR", required=True)
    proxy = GitProxy(daemon.port, hide_capability=b"object-info")
    try:
        url = daemon.url("sample.git", proxy.port)
        with mounted(url, mnt, home):
            assert os.stat(mnt / "README.md").st_size == len(b"# sample\n")
            assert os.readlink(mnt / "links" / "to-readme") == "../README.md"
        for snapshot in (home / "snapshots").glob("*.sqlite"):
            snapshot.unlink()  # the next prepare learns everything again
        damage(blob_path(home, sample, "README.md"), "truncate")
        damage(blob_path(home, sample, "links/to-readme"), "flip")
        with mounted(url, mnt, home):
            assert os.readlink(mnt / "links" / "to-readme") == "../README.md"
            assert os.stat(mnt / "README.md").st_size == len(b"# sample\n")
            assert (mnt / "README.md").read_bytes() == b"# sample\n"
        assert len(quarantined(home)) == 2
    finally:
        proxy.stop()
