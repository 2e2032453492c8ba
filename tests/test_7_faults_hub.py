"""Faults on the Hub path: bad LFS bytes fail every handle that was served them, a file given
up on is tried again once the origin is repaired, and a damaged copy in the CAS is
quarantined and fetched again (against the Hub stand-in)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import hub_env
from tests.helpers.checklogs import ExpectLog
from tests.helpers.hub import HubServer
from tests.helpers.mounts import mounted
from tests.helpers.waiting import wait_for

BIG = "weights/big.bin"
SMALL = "config.json"

HOLD_OPEN = """
import errno, hashlib, sys
with open(sys.argv[1], "rb", buffering=0) as f:
    digest = hashlib.sha256()
    while chunk := f.read(1 << 20):
        digest.update(chunk)
    print(digest.hexdigest(), flush=True)
    sys.stdin.readline()  # the test says when to read again
    f.seek(0)
    try:
        f.read(4096)
    except OSError as exc:
        print(errno.errorcode[exc.errno], flush=True)
    else:
        print("read", flush=True)
"""


@pytest.fixture
def files(hub: HubServer) -> dict[str, bytes]:
    content = {SMALL: b'{"hidden": 32}\n', BIG: bytes(range(256)) * (24 * 4096)}  # 24 MiB
    hub.create_repo("org/model", content)
    return content


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


MISMATCH = r"^the content of \S+ does not match \S+ \(got \w+\): thrown away$"


def test_a_handle_served_bad_bytes_gets_eio_and_a_new_open_gets_good_ones(
    hub: HubServer,
    files: dict[str, bytes],
    tmp_path: Path,
    mnt: Path,
    home: Path,
    expect_log: ExpectLog,
) -> None:
    expect_log(MISMATCH, level="ERROR", required=True)
    expect_log(r"^read: \S+: bytes this open file was served did not match", required=True)
    hub.fault_corrupt(path=BIG, times=1)
    with mounted("hf://org/model", mnt, home, env=hub_env(hub, tmp_path)) as mount:
        reader = subprocess.Popen(
            [sys.executable, "-c", HOLD_OPEN, str(mnt / BIG)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert reader.stdout is not None and reader.stdin is not None
            served = reader.stdout.readline().strip()
            assert served != sha256(files[BIG])  # streamed as it came: the trade-off
            wait_for(lambda: "will be fetched again" in mount.log(), 30, "the bad copy to go")
            reader.stdin.write("again\n")
            reader.stdin.flush()
            assert reader.stdout.readline().strip() == "EIO"  # told, not silently right
        finally:
            reader.kill()
            reader.communicate()  # reaps it and closes our ends of its pipes
        assert hashlib.sha256((mnt / BIG).read_bytes()).hexdigest() == sha256(files[BIG])
        assert "bytes this open file was served did not match" in mount.log()


def test_a_file_given_up_on_is_fetched_again_once_the_origin_is_repaired(
    hub: HubServer,
    files: dict[str, bytes],
    tmp_path: Path,
    mnt: Path,
    home: Path,
    expect_log: ExpectLog,
) -> None:
    expect_log(MISMATCH, level="ERROR", required=True)
    expect_log(r"^giving up on git-sha1:\w+ for 2 s$", level="ERROR", required=True)
    expect_log(r"^read: the content of \S+ does not match \S+$", level="ERROR", required=True)
    hub.fault_corrupt(path=SMALL, times=2)  # two bad copies: given up on, for a while
    with mounted("hf://org/model", mnt, home, env=hub_env(hub, tmp_path)) as mount:
        with pytest.raises(OSError) as failed:
            (mnt / SMALL).read_bytes()
        assert failed.value.errno == 5
        assert "giving up on" in mount.log()
        # the stand-in serves good bytes now: after the backoff the file reads right
        wait_for(lambda: _reads(mnt / SMALL) == files[SMALL], 30, "the file to heal")


def _reads(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def test_a_damaged_copy_in_the_cas_is_quarantined(
    hub: HubServer,
    files: dict[str, bytes],
    tmp_path: Path,
    mnt: Path,
    home: Path,
    expect_log: ExpectLog,
) -> None:
    expect_log(r"^blob git-sha1:\w+ in the CAS is damaged \(15 bytes, expected 15\)", required=True)
    env = hub_env(hub, tmp_path)
    with mounted("hf://org/model", mnt, home, env=env):
        assert (mnt / SMALL).read_bytes() == files[SMALL]
    (kept,) = (home / "cas" / "git-sha1").glob("*/*")
    kept.chmod(0o644)
    kept.write_bytes(b'{"hidden": 33}\n')  # a flipped byte
    served = hub.total_bytes_served()
    with mounted("hf://org/model", mnt, home, env=env) as mount:
        assert (mnt / SMALL).read_bytes() == files[SMALL]
        assert "in the CAS is damaged" in mount.log()
    assert hub.total_bytes_served() > served  # fetched again
    assert len(list((home / "cas" / "quarantine").glob("*/*"))) == 1


def test_after_a_refresh_unchanged_files_come_from_the_new_commit(
    hub: HubServer, tmp_path: Path, home: Path
) -> None:
    """A refresh moves every fetch to the new commit's URLs, even for content that did not
    change and a partial begun before it (partials are keyed by digest): the Hub may stop
    serving the old revision."""
    from tests.helpers.daemons import running_daemon

    weights = bytes(range(256)) * 12_000  # 3 MB, stored as LFS
    first = hub.create_repo("org/model", {SMALL: b"{}\n", BIG: weights, "notes.txt": b"n\n"})
    with running_daemon(home, env=hub_env(hub, tmp_path)) as artifactfs:
        artifactfs.ok("add-repo", "m", "hf://org/model")
        mnt = home / "mnt" / "m"
        with open(mnt / BIG, "rb") as partly:
            assert partly.read(1000) == weights[:1000]  # a partial of the old commit's file
        second = hub.commit("org/model", {SMALL: b'{"v": 2}\n'})
        artifactfs.ok("refresh", "m")
        assert artifactfs.status("m")["commit"] == second
        hub.forget_commit("org/model", first)
        hub.requests.clear()
        assert (mnt / BIG).read_bytes() == weights
        assert (mnt / "notes.txt").read_bytes() == b"n\n"
        assert (mnt / SMALL).read_bytes() == b'{"v": 2}\n'
        resolved = [target for _, target, _ in hub.requests if "/resolve/" in target]
        assert resolved, hub.requests
        assert all(f"/resolve/{second}/" in target for target in resolved), resolved
