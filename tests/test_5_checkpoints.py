"""Workspace checkpoints through real daemons, mounts, a git daemon and an S3 server (moto,
over HTTP): a workspace checkpointed on one home comes back on another exactly (bytes, modes,
deletions, renames, symlinks, ``git status``); a second checkpoint sends only what changed;
two homes racing for one checkpoint name: the loser is told and replaces nothing;
``checkpoint.interval`` checkpoints without a command."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.daemons import running_daemon, worker_pids
from tests.helpers.gitrepos import Repo
from tests.helpers.s3 import S3Server, running_s3
from tests.helpers.servers import GitDaemon
from tests.helpers.waiting import wait_for

BUCKET = "tier"
PREFIX = "team"


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    with running_s3(tmp_path / "moto.log") as server:
        server.make_bucket(BUCKET)
        yield server


def tier_env(s3: S3Server, **more: str) -> dict[str, str]:
    return {
        **s3.env(),
        "ARTIFACTFS_TIER_URL": f"s3://{BUCKET}/{PREFIX}",
        "ARTIFACTFS_TIER_ENDPOINT": s3.endpoint,
        **more,
    }


IDENTITY = ("-c", "user.name=Agent", "-c", "user.email=agent@example.com")


def git(tree: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=tree, capture_output=True, text=True, check=True
    ).stdout


def git_status(tree: Path) -> str:
    """With the branch line: the branch, its upstream and how far ahead it is come back too."""
    return git(tree, "status", "--porcelain", "--branch")


def tree_of(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` (but the root's ``.git`` gitfile, which names this home):
    kind, permission bits, modification time, ``user.*`` attributes, and the bytes' digest
    or the link's target."""
    found: dict[str, tuple[Any, ...]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if relative == ".git":
                continue
            info = os.lstat(path)
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                found[relative] = ("link", os.readlink(path), info.st_mtime_ns)
                continue
            xattrs = {  # the user's (ours, user.artifactfs.*, tell the cache's state)
                n: os.getxattr(path, n)
                for n in os.listxattr(path)
                if n.startswith("user.") and not n.startswith("user.artifactfs.")
            }
            if stat.S_ISDIR(info.st_mode):
                found[relative] = ("dir", mode, info.st_mtime_ns, xattrs)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[relative] = ("file", mode, digest, info.st_mtime_ns, xattrs)
    return found


def blob_key(data: bytes) -> str:
    return key_of(hashlib.sha256(data).hexdigest())


def key_of(digest: str) -> str:
    return f"{PREFIX}/blobs/sha256/{digest[:2]}/{digest}"


def pointer(s3: S3Server, ref: str) -> dict[str, Any]:
    return dict(json.loads(s3.read(BUCKET, f"{PREFIX}/checkpoints/{ref}")))


def kill_everything(artifactfs: Any, home: Path) -> None:
    artifactfs.kill()
    for pid in worker_pids(home):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: worker_pids(home) == [], 10, "the workers to die")


def test_restore_on_another_home_is_identical(
    daemon: GitDaemon, sample: Repo, tmp_path: Path, s3: S3Server
) -> None:
    env = tier_env(s3)
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    with running_daemon(home_a, env) as artifactfs:
        artifactfs.ok("add-repo", "work", daemon.url("sample.git"))
        mnt = home_a / "mnt" / "work"
        (mnt / "README.md").write_bytes(b"# edited on a\n")
        (mnt / "notes.txt").write_bytes(b"new notes\n")
        os.unlink(mnt / "empty.txt")
        os.rename(mnt / "deep", mnt / "shallow")
        os.symlink("notes.txt", mnt / "to-notes")
        os.chmod(mnt / "bin" / "tool.sh", 0o700)
        (mnt / "new-dir").mkdir()
        (mnt / "new-dir" / "run.sh").write_bytes(b"#!/bin/sh\n")
        os.chmod(mnt / "new-dir" / "run.sh", 0o750)
        os.setxattr(mnt / "notes.txt", "user.origin", b"home a")
        os.setxattr(mnt / "shallow", "user.kind", b"renamed dir")
        os.utime(mnt / "data", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
        git(mnt, "add", "README.md")
        git(mnt, *IDENTITY, "commit", "-q", "-m", "edited on a")  # a local commit
        git(mnt, "add", "notes.txt")  # and something staged
        # what a checkpoint must not carry to another node: config that runs programs, hooks
        pwned = tmp_path / "pwned"
        git(mnt, "config", "user.name", "Agent A")
        git(mnt, "config", "alias.st", f"!touch {pwned}")
        git(mnt, "config", "core.pager", f"touch {pwned}")
        hook = home_a / "repos" / "work" / "git" / "hooks" / "pre-commit"
        hook.parent.mkdir(exist_ok=True)
        hook.write_text(f"#!/bin/sh\ntouch {pwned}\n")
        hook.chmod(0o755)
        first = artifactfs.ok("checkpoint", "work", env=env)
        assert "checkpoint work of work" in first
        objects = set(s3.objects(BUCKET, f"{PREFIX}/blobs/"))
        assert blob_key(b"new notes\n") in objects
        assert blob_key(b"# edited on a\n") in objects

        # incremental: one more file, and only it and the manifest go up
        (mnt / "more.txt").write_bytes(b"one more\n")
        second = artifactfs.ok("checkpoint", "work", env=env)
        assert ", 2 object(s) sent" in second, second
        added = set(s3.objects(BUCKET, f"{PREFIX}/blobs/")) - objects
        manifest = pointer(s3, "work")["manifest"].removeprefix("sha256:")
        assert added == {blob_key(b"one more\n"), key_of(manifest)}

        # nothing changed: nothing but the pointer moves
        third = artifactfs.ok("checkpoint", "work", env=env)
        assert ", 0 object(s) sent" in third, third

        before_tree = tree_of(mnt)
        before_status = git_status(mnt)
        assert "A  notes.txt" in before_status.splitlines()
        assert "[ahead 1]" in before_status.splitlines()[0]
        before_log = git(mnt, "log", "--format=%H %s", "-2")
        kill_everything(artifactfs, home_a)
        # no worker (its socket left behind): the command takes the checkpoint itself
        assert (home_a / "run").exists()
        offline = artifactfs.ok("checkpoint", "work", env=env)  # git status wrote its index
        assert "checkpoint work of work" in offline, offline

    home_a.rename(tmp_path / "a-gone")  # nothing on b may still lean on a's paths
    with running_daemon(home_b, env) as artifactfs:
        artifactfs.ok("restore", "work", "--from", "work", env=env)
        mnt_b = home_b / "mnt" / "work"
        assert tree_of(mnt_b) == before_tree
        assert git_status(mnt_b) == before_status
        assert git(mnt_b, "log", "--format=%H %s", "-2") == before_log
        git_dir = home_b / "repos" / "work" / "git"
        for name in ("config", "artifactfs-fsmonitor", "artifactfs-cas-remote"):
            assert f"{home_a}/" not in (git_dir / name).read_text(), name
        config = (git_dir / "config").read_text()
        assert "Agent A" in config  # the user's identity and branch tracking stay
        assert str(pwned) not in config and "alias" not in config and "pager" not in config
        assert not (git_dir / "hooks" / "pre-commit").exists()
        assert not (git_dir / "artifactfs-restored").exists()
        git(mnt_b, *IDENTITY, "commit", "-q", "-m", "committed on b")
        assert not pwned.exists()
        assert artifactfs.status("work")["state"] == "ready"

        again = artifactfs.cli("restore", "work", "--from", "work", env=env)
        assert again.returncode == 1
        assert again.stderr.count("\n") == 1 and "registered here already" in again.stderr

        # the restored node checkpoints on from what it restored
        (mnt_b / "from-b.txt").write_bytes(b"b was here\n")
        artifactfs.ok("checkpoint", "work", env=env)
        assert blob_key(b"b was here\n") in s3.objects(BUCKET, f"{PREFIX}/blobs/")


def test_stale_checkpoint_loses_and_replaces_nothing(
    daemon: GitDaemon, sample: Repo, tmp_path: Path, s3: S3Server
) -> None:
    env = tier_env(s3)
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    with running_daemon(home_a, env) as node_a, running_daemon(home_b, env) as node_b:
        for node, home in ((node_a, home_a), (node_b, home_b)):
            node.ok("add-repo", "work", daemon.url("sample.git"))
            (home / "mnt" / "work" / "who.txt").write_bytes(str(home.name).encode())
        node_a.ok("checkpoint", "work", "--to", "shared", env=env)
        winner = pointer(s3, "shared")

        lost = node_b.cli("checkpoint", "work", "--to", "shared", env=env)
        assert lost.returncode == 1
        assert lost.stderr.count("\n") == 1
        assert "moved by another node" in lost.stderr and "--force" in lost.stderr
        assert pointer(s3, "shared") == winner

        node_b.ok("checkpoint", "work", "--to", "shared", "--force", env=env)
        forced = pointer(s3, "shared")
        assert forced["manifest"] != winner["manifest"]
        stale = node_a.cli("checkpoint", "work", "--to", "shared", env=env)
        assert stale.returncode == 1 and "moved by another node" in stale.stderr
        assert pointer(s3, "shared") == forced


def test_interval_checkpoints_without_a_command(
    daemon: GitDaemon, sample: Repo, tmp_path: Path, s3: S3Server
) -> None:
    env = tier_env(s3, ARTIFACTFS_CHECKPOINT_INTERVAL="1")
    home = tmp_path / "a"
    with running_daemon(home, env) as artifactfs:
        artifactfs.ok("add-repo", "work", daemon.url("sample.git"))
        (home / "mnt" / "work" / "auto.txt").write_bytes(b"saved by itself\n")
        wait_for(
            lambda: (
                blob_key(b"saved by itself\n") in s3.objects(BUCKET, f"{PREFIX}/blobs/")
                and f"{PREFIX}/checkpoints/work" in s3.objects(BUCKET, f"{PREFIX}/checkpoints/")
            ),
            30,
            "a periodic checkpoint",
        )
        manifest = pointer(s3, "work")["manifest"].removeprefix("sha256:")
        wait_for(  # status tells it too
            lambda: artifactfs.status("work").get("checkpoint", {}).get("manifest") == manifest,
            30,
            "status to name the checkpoint",
        )


def test_bad_input(tmp_path: Path, s3: S3Server) -> None:
    env = tier_env(s3)
    home = tmp_path / "a"
    with running_daemon(home, env) as artifactfs:
        missing = artifactfs.cli("restore", "work", "--from", "nothing-here", env=env)
        assert missing.returncode == 1
        assert missing.stderr.count("\n") == 1 and "no checkpoint named nothing-here" in (
            missing.stderr
        )
        assert not (home / "repos" / "work").exists()
        bad = artifactfs.cli("restore", "work", "--from", "../x", env=env)
        assert bad.returncode == 2 and "not a checkpoint name" in bad.stderr
        unknown = artifactfs.cli("checkpoint", "nobody", env=env)
        assert unknown.returncode == 2 and "no repository named" in unknown.stderr
        s3.write(BUCKET, f"{PREFIX}/checkpoints/broken", b"{not json")
        broken = artifactfs.cli("restore", "work", "--from", "broken", env=env)
        assert broken.returncode == 1 and "damaged" in broken.stderr
        assert "Traceback" not in broken.stderr + missing.stderr


def test_a_clean_stop_checkpoints(
    daemon: GitDaemon, sample: Repo, tmp_path: Path, s3: S3Server
) -> None:
    """With checkpoint.interval set, what changed since the last periodic checkpoint goes up
    when the worker stops cleanly (here long before the first periodic one would)."""
    env = tier_env(s3, ARTIFACTFS_CHECKPOINT_INTERVAL="3600")
    home = tmp_path / "a"
    with running_daemon(home, env) as artifactfs:
        artifactfs.ok("add-repo", "work", daemon.url("sample.git"))
        (home / "mnt" / "work" / "last.txt").write_bytes(b"kept at the stop\n")
        assert f"{PREFIX}/checkpoints/work" not in s3.objects(BUCKET, f"{PREFIX}/checkpoints/")
        artifactfs.ok("remove-repo", "work")
        assert blob_key(b"kept at the stop\n") in s3.objects(BUCKET, f"{PREFIX}/blobs/")
        assert pointer(s3, "work")["commit"] == sample.rev_parse("HEAD")


def test_a_checkpoint_of_a_busy_mount_is_of_one_instant(
    daemon: GitDaemon, sample: Repo, tmp_path: Path, s3: S3Server
) -> None:
    """A writer overwrites ``pair-a`` then ``pair-b`` in place with the next number, again and
    again: at every instant a is b or b + 1. Every checkpoint taken meanwhile shows such an
    instant: the worker holds changes off while it captures (reading the files one after the
    other while they change, with a large file read between them, would catch b ahead of a:
    this test fails without the hold)."""
    env = tier_env(s3)
    home = tmp_path / "a"
    with running_daemon(home, env) as artifactfs:
        artifactfs.ok("add-repo", "work", daemon.url("sample.git"))
        mnt = home / "mnt" / "work"
        (mnt / "pair-a").write_bytes(b"%08d" % 0)
        (mnt / "ballast").write_bytes(os.urandom(32 << 20))  # read between a and b
        (mnt / "pair-b").write_bytes(b"%08d" % 0)
        stop = threading.Event()
        written = [0]

        def write() -> None:
            fds = [os.open(mnt / name, os.O_WRONLY) for name in ("pair-a", "pair-b")]
            try:
                while not stop.is_set():
                    written[0] += 1
                    for fd in fds:
                        os.pwrite(fd, b"%08d" % written[0], 0)
            finally:
                for fd in fds:
                    os.close(fd)

        writer = threading.Thread(target=write)
        writer.start()
        seen = []
        try:
            for _ in range(8):
                artifactfs.ok("checkpoint", "work", env=env)
                seen.append(pair_in_checkpoint(s3, "work"))
        finally:
            stop.set()
            writer.join(30)
        assert written[0] > 8
        for a, b in seen:
            assert a - b in (0, 1), seen
        assert len(set(seen)) > 1, seen  # the writer went on between checkpoints


def pair_in_checkpoint(s3: S3Server, ref: str) -> tuple[int, int]:
    manifest_digest = pointer(s3, ref)["manifest"].removeprefix("sha256:")
    manifest = json.loads(s3.read(BUCKET, key_of(manifest_digest)))
    overlay = manifest["overlay"]
    columns = overlay["columns"]
    values = {}
    for row in overlay["nodes"]:
        node = dict(zip(columns, row, strict=True))
        name = base64.b64decode(node["name"]).decode()
        if node["parent"] == 1 and name in ("pair-a", "pair-b"):
            upper = overlay["upper"][str(node["ino"])]
            values[name] = int(s3.read(BUCKET, key_of(upper["sha256"])))
    return values["pair-a"], values["pair-b"]


def test_restore_keeps_a_workspace_with_changes(
    daemon: GitDaemon, sample: Repo, tmp_path: Path, s3: S3Server
) -> None:
    env = tier_env(s3)
    home = tmp_path / "a"
    with running_daemon(home, env) as artifactfs:
        artifactfs.ok("add-repo", "work", daemon.url("sample.git"))
        (home / "mnt" / "work" / "mine.txt").write_bytes(b"not to be lost\n")
        artifactfs.ok("checkpoint", "work", "--to", "other", env=env)
        artifactfs.ok("remove-repo", "work")  # the workspace is kept
        refused = artifactfs.cli("restore", "work", "--from", "other", env=env)
        assert refused.returncode == 1
        assert refused.stderr.count("\n") == 1 and "holds 1 changed path" in refused.stderr
        upper = home / "repos" / "work" / "upper"
        assert [p.read_bytes() for p in upper.iterdir()] == [b"not to be lost\n"]

        down = tier_env(
            s3, ARTIFACTFS_TIER_ENDPOINT="http://127.0.0.1:9", ARTIFACTFS_TIER_TIMEOUT="2"
        )
        unreachable = artifactfs.cli("restore", "again", "--from", "other", env=down)
        assert unreachable.returncode == 1, unreachable.stderr
        assert unreachable.stderr.count("\n") == 1 and "Traceback" not in unreachable.stderr
        assert not (home / "repos" / "again").exists()

        # the other spelling, under a new name
        url = daemon.url("sample.git")
        artifactfs.ok("add-repo", "copy", url, "--restore", "other", env=env)
        assert (home / "mnt" / "copy" / "mine.txt").read_bytes() == b"not to be lost\n"
        mixed = artifactfs.cli("add-repo", "x", url, "--restore", "other", "--ref", "main")
        assert mixed.returncode == 2 and "drop --ref" in mixed.stderr

        # a blob damaged in the tier: refused before anything is written
        s3.write(BUCKET, blob_key(b"not to be lost\n"), b"not to be lost either\n")
        damaged = artifactfs.cli("restore", "evil", "--from", "other", env=env)
        assert damaged.returncode == 1
        assert damaged.stderr.count("\n") == 1 and "does not match its digest" in damaged.stderr
        assert not (home / "repos" / "evil").exists()
        assert not [p for p in (home / "tmp").iterdir() if p.name.startswith("restore-")]


def test_a_shared_directory_tier_works_the_same(
    daemon: GitDaemon, sample: Repo, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    env = {"ARTIFACTFS_TIER_URL": f"file://{shared}"}
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    with running_daemon(home_a, env) as node_a, running_daemon(home_b, env) as node_b:
        node_a.ok("add-repo", "work", daemon.url("sample.git"))
        mnt = home_a / "mnt" / "work"
        os.unlink(mnt / "README.md")
        (mnt / "shared.txt").write_bytes(b"through a directory\n")
        node_a.ok("checkpoint", "work", env=env)
        node_b.ok("restore", "work", "--from", "work", env=env)
        assert tree_of(home_b / "mnt" / "work") == tree_of(mnt)
        (home_b / "mnt" / "work" / "b.txt").write_bytes(b"b\n")
        node_b.ok("checkpoint", "work", env=env)  # b goes on from what it restored
        stale = node_a.cli("checkpoint", "work", env=env)  # a did not see b's move
        assert stale.returncode == 1 and "moved by another node" in stale.stderr
        pointer = json.loads((shared / "checkpoints" / "work").read_bytes())
        manifest = (shared / "blobs" / "sha256" / pointer["manifest"][7:9]).iterdir()
        assert any(p.name == pointer["manifest"][7:] for p in manifest)
