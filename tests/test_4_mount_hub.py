"""Hugging Face Hub repositories through a real mount, against the Hub stand-in."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download

from artifactfs.cas.partial import BLOCK
from tests.conftest import hub_env
from tests.helpers.checklogs import ExpectLog
from tests.helpers.hub import HubServer
from tests.helpers.models import model_repo, tensor_locations, with_big_file
from tests.helpers.mounts import mounted
from tests.helpers.waiting import wait_for

BIG_MIB = 64


@pytest.fixture
def model(hub: HubServer) -> dict[str, bytes]:
    files = with_big_file(model_repo(), BIG_MIB)
    hub.create_repo("org/model", files)
    return files


def test_every_file_matches_hf_hub_download(
    hub: HubServer, model: dict[str, bytes], tmp_path: Path, mnt: Path, home: Path
) -> None:
    with mounted("hf://org/model", mnt, home, env=hub_env(hub, tmp_path)) as mount:
        listed = subprocess.run(
            ["find", str(mnt), "-type", "f", "-printf", "%P %s\\n"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        assert sorted(listed) == sorted(f"{path} {len(data)}" for path, data in model.items())
        assert hub.total_bytes_served() == 0  # listing, stat: no content
        assert mount.xattr("commit") == hub.sha("org/model")
        assert mount.xattr("ref") == "main"  # the Hub's default, not git's HEAD
        for path, data in model.items():
            downloaded = hf_hub_download(
                "org/model", path, endpoint=hub.endpoint, cache_dir=tmp_path / "hf-cache"
            )
            expected = Path(downloaded).read_bytes()
            assert expected == data
            assert (mnt / path).read_bytes() == expected, path
        big = mnt / "weights" / "big.bin"
        assert mount.xattr("sha256", big) == hashlib.sha256(model["weights/big.bin"]).hexdigest()
        assert mount.xattr("cached", big) == str(BIG_MIB << 20)


_LOAD_TENSOR = """
import sys
from safetensors import safe_open
with safe_open(sys.argv[1], framework="numpy") as opened:
    sys.stdout.buffer.write(opened.get_tensor(sys.argv[2]).tobytes())
"""


def test_one_tensor_costs_a_fraction_of_the_shard(
    hub: HubServer, tmp_path: Path, mnt: Path, home: Path
) -> None:
    files = model_repo(shards=1, hidden=512, layers=4)
    hub.create_repo("org/wide", files)
    shard = "model-00001-of-00001.safetensors"
    locations = tensor_locations(files)
    name = "encoder.layer.1.attention.self.query.bias"
    with mounted("hf://org/wide", mnt, home, env=hub_env(hub, tmp_path)):
        # in another process: safetensors maps the file, and a page fault taken while holding
        # this process's GIL would starve the stand-in server's threads
        loaded = subprocess.run(
            [sys.executable, "-c", _LOAD_TENSOR, str(mnt / shard), name],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        location = locations[name]
        assert loaded == files[shard][location.start : location.end]
        served = hub.bytes_served("org/wide", shard)
        assert served <= (1 << 20) + (location.end - location.start)
        assert served < len(files[shard]) // 4


def test_read_ahead_stops_at_the_end_of_a_tensor_until_the_reader_streams(
    hub: HubServer, tmp_path: Path, mnt: Path, home: Path
) -> None:
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(4)
    tensors = {f"t{i:02d}": rng.standard_normal((1024, 1024), dtype=np.float32) for i in range(8)}
    data = save(tensors)  # 8 tensors of 4 MiB
    hub.create_repo("org/layers", {"model.safetensors": data})
    name = "t03"
    expected = tensors[name].tobytes()
    with mounted("hf://org/layers", mnt, home, env=hub_env(hub, tmp_path)):
        loaded = subprocess.run(
            [sys.executable, "-c", _LOAD_TENSOR, str(mnt / "model.safetensors"), name],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        assert loaded == expected
        served = hub.bytes_served("org/layers", "model.safetensors")
        # A growing window would have fetched up to 4 MiB past the tensor's end. Nothing may
        # be fetched beyond the block after the one the tensor ends in; what the kernel reads
        # around mapped pages before the tensor varies a little with timing.
        header_end = 8 + int.from_bytes(data[:8], "little")
        tensor_end = header_end + json.loads(data[8:header_end])[name]["data_offsets"][1]
        limit = (tensor_end // BLOCK + 2) * BLOCK
        ranges = [r[2] for r in hub.requests if "/resolve/" in r[1]]
        assert all(int(r.split("-")[1]) < limit for r in ranges if r), (
            f"{limit} {tensor_end} {ranges}"
        )
        assert len(expected) <= served <= len(expected) + (2 << 20), ranges
        whole = subprocess.run(  # another process: see _LOAD_TENSOR
            ["sha256sum", str(mnt / "model.safetensors")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[0]
        assert whole == hashlib.sha256(data).hexdigest()
        # and what the tensor brought is not fetched again
        assert hub.bytes_served("org/layers", "model.safetensors") == len(data)


BIG = "weights/big.bin"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_range(path: Path, offset: int, size: int) -> bytes:
    """Read in another process (a reader in this one could starve the stand-in's threads)."""
    return subprocess.run(
        ["dd", f"if={path}", "bs=64K", f"skip={offset}", f"count={size}",
         "iflag=skip_bytes,count_bytes", "status=none"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip


def test_a_download_survives_a_restart_and_a_moving_branch(
    hub: HubServer, model: dict[str, bytes], tmp_path: Path, mnt: Path, home: Path
) -> None:
    env = hub_env(hub, tmp_path)
    big = model[BIG]
    head = 4 << 20
    with mounted("hf://org/model", mnt, home, env=env):
        assert read_range(mnt / BIG, 0, head) == big[:head]
        first = hub.bytes_served("org/model", BIG)
        assert head <= first <= 3 * head  # the read-ahead grows with what was read
    moved = hub.commit("org/model", {"README.md": b"# moved on\n"})  # same big file, new commit
    with mounted("hf://org/model", mnt, home, env=env) as mount:
        assert mount.xattr("commit") == moved
        saved = int(mount.xattr("cached", mnt / BIG))  # what the first worker kept, unread yet
        assert head <= saved < len(big)  # (read-ahead may have gone on after ``first``)
        assert (mnt / "README.md").read_bytes() == b"# moved on\n"
        assert sha256_of(mnt / BIG) == hashlib.sha256(big).hexdigest()
        total = hub.bytes_served("org/model", BIG)
        assert total <= len(big) + (8 << 20)  # the rest, not all of it again
        assert mount.xattr("cached", mnt / BIG) == str(len(big))
    digest = hashlib.sha256(big).hexdigest()
    assert (home / "cas" / "sha256" / digest[:2] / digest).stat().st_size == len(big)


@pytest.mark.parametrize(
    "fault",
    ["429", "503", "cut", "ignore-range", "corrupt-lfs", "corrupt-small", "redirect"],
)
def test_hub_trouble_is_survived_without_corruption(
    fault: str,
    hub: HubServer,
    model: dict[str, bytes],
    tmp_path: Path,
    mnt: Path,
    home: Path,
    expect_log: ExpectLog,
) -> None:
    big, small = model[BIG], model["config.json"]
    if fault.startswith("corrupt-"):
        path = re.escape(BIG if fault == "corrupt-lfs" else "config.json")
        expect_log(
            rf"^the content of \S+/{path} does not match \S+ \(got \w+\): thrown away$",
            level="ERROR",
            required=True,
        )
    if fault == "429":
        hub.fault_status(429, retry_after=1, times=2, path=BIG)
    elif fault == "503":
        hub.fault_status(503, times=3, path=BIG)
    elif fault == "cut":
        hub.fault_cut(after_bytes=3 << 20, times=2, path=BIG)
    elif fault == "ignore-range":
        hub.fault_ignore_range(times=1, path=BIG)
    elif fault == "corrupt-lfs":
        hub.fault_corrupt(path=BIG, times=1)
    elif fault == "corrupt-small":
        hub.fault_corrupt(path="config.json", times=1)
    else:
        hub.lfs_redirect = True
    with mounted("hf://org/model", mnt, home, env=hub_env(hub, tmp_path)) as mount:
        assert (mnt / "config.json").read_bytes() == small  # a small file is verified first
        digest = sha256_of(mnt / BIG)
        if fault == "corrupt-lfs":  # served as it came; found out when complete
            assert digest != hashlib.sha256(big).hexdigest()
            wait_for(lambda: "will be fetched again" in mount.log(), 30, "the bad copy to go")
            assert "does not match" in mount.log()
            digest = sha256_of(mnt / BIG)  # fetched again, clean
        assert digest == hashlib.sha256(big).hexdigest()
        assert mount.xattr("cached", mnt / BIG) == str(len(big))
    expected = hashlib.sha256(big).hexdigest()
    kept = home / "cas" / "sha256" / expected[:2] / expected
    assert sha256_of(kept) == expected


def test_a_stalled_read_fails_with_eio_within_the_timeout(
    hub: HubServer,
    model: dict[str, bytes],
    tmp_path: Path,
    mnt: Path,
    home: Path,
    expect_log: ExpectLog,
) -> None:
    expect_log(r"^read: \S+: no answer within 2 s$", level="ERROR", required=True)
    env = hub_env(hub, tmp_path)
    with mounted("hf://org/model", mnt, home, "--io-timeout", "2", env=env) as mount:
        hub.fault_stall(path=BIG)
        reader = subprocess.run(
            ["dd", f"if={mnt / BIG}", "of=/dev/null", "bs=1M", "count=1", "status=none"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert reader.returncode != 0 and "Input/output error" in reader.stderr
        hub.release()
        hub.clear_faults()
        assert read_range(mnt / BIG, 0, 1 << 20) == model[BIG][: 1 << 20]
        assert "no answer within 2 s" in mount.log()


@pytest.mark.parametrize(
    ("source", "setup", "reason"),
    [
        ("hf://org/missing", None, "not found, or private"),
        ("hf://org/model@nosuch", None, "unknown revision"),
        ("hf://org/private", "private", "not found, or private"),
        ("hf://org/gated", "gated", "gated (accept its conditions"),
        ("hf://datasets/org/model", None, "not found"),
    ],
)
def test_hub_refusals_fail_the_mount_with_the_reason(
    source: str, setup: str | None, reason: str,
    hub: HubServer, model: dict[str, bytes], tmp_path: Path, mnt: Path, home: Path,
    expect_log: ExpectLog,
) -> None:  # fmt: skip
    expect_log(
        rf"^cannot prepare {re.escape(source)}: .*{re.escape(reason)}",
        level="ERROR",
        required=True,
    )
    if setup == "private":
        hub.create_repo("org/private", {"a.txt": b"secret\n"}, private=True)
    if setup == "gated":
        hub.create_repo("org/gated", {"a.txt": b"conditions apply\n"}, gated=True)
    env = hub_env(hub, tmp_path)
    with mounted(source, mnt, home, "--keep-failed", ready=False, env=env) as mount:
        wait_for(lambda: mount.state() == "failed", 30, "prepare to fail")
        assert reason in mount.xattr("error")


def test_a_private_repository_with_hf_token(
    hub: HubServer, tmp_path: Path, mnt: Path, home: Path
) -> None:
    hub.token = "hf_stand_in_token"
    hub.create_repo("org/private", {"a.txt": b"secret\n", "w.bin": b"\1" * 3_000_000}, private=True)
    env = {**hub_env(hub, tmp_path), "HF_TOKEN": "hf_stand_in_token"}
    with mounted("hf://org/private", mnt, home, env=env):
        assert (mnt / "a.txt").read_bytes() == b"secret\n"
        assert read_range(mnt / "w.bin", 1000, 10) == b"\1" * 10


def test_hf_token_given_to_add_repo_reaches_the_worker(
    hub: HubServer, tmp_path: Path, home: Path
) -> None:
    """As ARTIFACTFS_GIT_TOKEN does for git: the daemon has no token of its own; the one in
    add-repo's environment is handed over (kept in memory, given to the worker on stdin)."""
    from tests.helpers.daemons import running_daemon

    hub.token = "hf_stand_in_token"
    hub.create_repo("org/private", {"a.txt": b"secret\n"}, private=True)
    with running_daemon(home, env=hub_env(hub, tmp_path)) as artifactfs:  # HF_TOKEN=""
        artifactfs.ok("add-repo", "p", "hf://org/private", env={"HF_TOKEN": "hf_stand_in_token"})
        assert (home / "mnt" / "p" / "a.txt").read_bytes() == b"secret\n"
        assert "hf_stand_in_token" not in artifactfs.ok("status", "p", "--json")


def test_a_dataset_and_a_pinned_revision(
    hub: HubServer, tmp_path: Path, mnt: Path, home: Path
) -> None:
    first = hub.create_repo("org/data", {"train/part-0.jsonl": b'{"x": 1}\n'}, repo_type="dataset")
    hub.commit("org/data", {"train/part-0.jsonl": b'{"x": 2}\n'}, repo_type="dataset")
    with mounted(f"hf://datasets/org/data@{first}", mnt, home, env=hub_env(hub, tmp_path)) as m:
        assert (mnt / "train" / "part-0.jsonl").read_bytes() == b'{"x": 1}\n'
        assert m.xattr("commit") == first
        assert m.xattr("ref") == first


def test_through_the_daemon(
    hub: HubServer, model: dict[str, bytes], tmp_path: Path, home: Path
) -> None:
    from tests.helpers.daemons import running_daemon

    with running_daemon(home, env=hub_env(hub, tmp_path)) as artifactfs:
        artifactfs.ok("add-repo", "minilm", "hf://org/model", "--async")
        mnt = home / "mnt" / "minilm"
        assert (mnt / "config.json").read_bytes() == model["config.json"]
        status = artifactfs.status("minilm")
        assert (status["state"], status["source"]) == ("ready", "hf://org/model")
        assert status["commit"] == hub.sha("org/model")
        first = hub.commit("org/model", {"config.json": b"{}\n"})
        artifactfs.ok("refresh", "minilm")
        assert artifactfs.status("minilm")["commit"] == first
        assert (mnt / "config.json").read_bytes() == b"{}\n"
        assert read_range(mnt / BIG, 0, 1000) == model[BIG][:1000]
        artifactfs.ok("remove-repo", "minilm", "--purge")
