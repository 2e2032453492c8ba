"""Hugging Face Hub repositories through a real mount, against the Hub stand-in."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download

from tests.conftest import hub_env
from tests.helpers.hub import HubServer
from tests.helpers.models import model_repo, tensor_locations, with_big_file
from tests.helpers.mounts import mounted

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
