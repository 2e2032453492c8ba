"""The same repository through every transport we can run here, and through a server that
does not offer ``object-info`` (sizes are then learned on demand, one batch per directory)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIG, SAMPLE_FILES
from tests.helpers.gitrepos import Repo, make_repo
from tests.helpers.mounts import mounted
from tests.helpers.servers import GitDaemon, GitProxy, HttpGitServer, SshServer


def check_sample(mnt: Path) -> None:
    assert (mnt / "README.md").read_bytes() == b"# sample\n"
    assert os.stat(mnt / "data" / "big.bin").st_size == len(BIG)
    assert (mnt / "data" / "big.bin").read_bytes() == BIG
    assert os.readlink(mnt / "links" / "to-readme") == "../README.md"
    assert (mnt / "links" / "to-readme").read_bytes() == b"# sample\n"
    assert os.access(mnt / "bin" / "tool.sh", os.X_OK)


def test_smart_http(http_server: HttpGitServer, sample: Repo, mnt: Path, home: Path) -> None:
    with mounted(http_server.url("sample.git"), mnt, home) as mount:
        check_sample(mnt)
        assert mount.xattr("commit") == sample.commit
        assert "does not offer object-info" not in mount.log()


def test_smart_http_protocol_v0(sample: Repo, repos: Path, mnt: Path, home: Path) -> None:
    """An old server: no filters, no object-info; the blobs it sends anyway are kept."""
    server = HttpGitServer(repos, protocol_v2=False)
    try:
        with mounted(server.url("sample.git"), mnt, home) as mount:
            assert "ignored the blob filter: kept 12 blobs" in mount.log()
            check_sample(mnt)
            posts = [r for r in server.requests if r.startswith("POST")]
            assert len(posts) == 1  # everything came with the first fetch
            assert mount.stderr() == ""
    finally:
        server.stop()


def test_ssh(sample: Repo, tmp_path: Path, mnt: Path, home: Path) -> None:
    server = SshServer(tmp_path / "sshd")
    try:
        env = {"GIT_SSH_COMMAND": server.ssh_command}
        with mounted(server.url(sample.path), mnt, home, env=env) as mount:
            check_sample(mnt)
            assert mount.xattr("commit") == sample.commit
            assert "does not offer object-info" not in mount.log()
    finally:
        server.stop()


@pytest.mark.parametrize("form", ["path", "file-url", "work-tree"])
def test_local_repositories(form: str, sample: Repo, repos: Path, mnt: Path, home: Path) -> None:
    source = {
        "path": str(sample.path),
        "file-url": f"file://{sample.path}",
        "work-tree": str(repos / ".work-sample.git"),
    }[form]
    with mounted(source, mnt, home) as mount:
        check_sample(mnt)
        assert mount.xattr("commit") == sample.commit
        assert "does not offer object-info" not in mount.log()


def test_server_without_object_info(daemon: GitDaemon, repos: Path, mnt: Path, home: Path) -> None:
    files = {name: c for name, c in SAMPLE_FILES.items() if name.startswith(("data/", "README"))}
    repo = make_repo(repos, "plain.git", files)
    proxy = GitProxy(daemon.port, hide_capability=b"object-info")
    try:
        with mounted(daemon.url("plain.git", proxy.port), mnt, home) as mount:
            assert "does not offer object-info" in mount.log()
            assert daemon.wanted() == [repo.commit]
            listing = subprocess.run(
                ["ls", "-l", "--time-style=+", str(mnt / "data")],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            sizes = {line.split()[-1]: int(line.split()[4]) for line in listing.splitlines()[1:]}
            assert sizes == {"big.bin": len(BIG), "binary.dat": 256 * 64}
            data_blobs = {repo.blob_id("data/big.bin"), repo.blob_id("data/binary.dat")}
            assert set(daemon.wanted()) == {repo.commit} | data_blobs
            assert daemon.fetch_commands() == 2  # the tree, then the whole directory at once
            assert (mnt / "data" / "big.bin").read_bytes() == BIG
            # a file read without listing its directory costs only its own blob
            assert (mnt / "README.md").read_bytes() == b"# sample\n"
            assert daemon.wanted()[3:] == [repo.blob_id("README.md")]
    finally:
        proxy.stop()
