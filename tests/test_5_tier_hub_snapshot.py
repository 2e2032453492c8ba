"""A Hub repository's snapshot through the shared tier: a node that mounted a commit shares
its snapshot, and a cold node mounts that pinned commit with the Hub down (its listing and
sizes; the bytes through the tier are the Hub read-through's, elsewhere)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import hub_env
from tests.helpers.checklogs import ExpectLog
from tests.helpers.hub import HubServer
from tests.helpers.models import model_repo
from tests.helpers.mounts import mounted
from tests.helpers.s3 import S3Server, running_s3
from tests.helpers.waiting import wait_for

BUCKET = "fleet"


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    with running_s3(tmp_path / "moto-server.txt") as server:
        server.make_bucket(BUCKET)
        yield server


def listing(mnt: Path) -> list[str]:
    found = subprocess.run(
        ["find", str(mnt), "-type", "f", "-printf", "%P %s\\n"],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(found.stdout.splitlines())


def test_cold_node_mounts_a_pinned_hub_commit_with_the_hub_down(
    hub: HubServer, s3: S3Server, tmp_path: Path, expect_log: ExpectLog
) -> None:
    files = model_repo()
    hub.create_repo("org/model", files)
    source = f"hf://org/model@{hub.sha('org/model')}"
    env = {
        **hub_env(hub, tmp_path),
        "ARTIFACTFS_TIER_URL": f"s3://{BUCKET}/nodes",
        "ARTIFACTFS_TIER_ENDPOINT": s3.endpoint,
        **s3.env(),
    }
    expected = sorted(f"{path} {len(data)}" for path, data in files.items())
    with mounted(source, tmp_path / "mnt-a", tmp_path / "node-a", "--read-only", env=env):
        assert listing(tmp_path / "mnt-a") == expected
        wait_for(lambda: s3.objects(BUCKET, "nodes/snapshots/"), 30, "the shared snapshot")
    hub.stop()
    expect_log(r"its snapshot came from the tier", level="WARNING", required=True)

    mnt = tmp_path / "mnt-b"
    with mounted(source, mnt, tmp_path / "node-b", "--read-only", env=env) as mount:
        assert mount.xattr("commit") == hub.sha("org/model")
        assert listing(mnt) == expected
