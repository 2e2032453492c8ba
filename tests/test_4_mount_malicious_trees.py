"""Trees a hostile server could send: unsafe entries are refused with a log line, never shown
or followed, and the rest of the tree still mounts."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.helpers.checklogs import ExpectLog
from tests.helpers.gitrepos import commit_tree, git, raw_tree, serve_config, write_object
from tests.helpers.mounts import mounted
from tests.helpers.servers import GitDaemon

REFUSALS = [
    "refused tree entry .: forbidden name b'.'",
    "refused tree entry ..: forbidden name b'..'",
    "refused tree entry sub/..: forbidden name b'..'",
    "refused tree entry a/b: name contains '/' or NUL",
    "refused tree entry .git: a tree entry named b'.git' would pose as a git directory",
    "refused tree entry .GIT: a tree entry named b'.GIT' would pose as a git directory",
    "refused tree entry dup: duplicate name in tree",
    "refused tree entry weird: unknown mode 170000",
    "refused symlink huge-link: target of 5242880 bytes",
    "refused symlink nul-link: symlink target contains NUL",
]
"""The warnings the hostile tree below must cause, one per unsafe entry."""


def build_hostile_repo(base: Path) -> tuple[Path, dict[str, str]]:
    repo = base / "hostile.git"
    git("init", "-q", "--bare", "-b", "main", str(repo))
    serve_config(repo)
    blobs = {
        "ok": write_object(repo, "blob", b"fine\n"),
        "other": write_object(repo, "blob", b"other\n"),
        "huge": write_object(repo, "blob", b"x" * (5 * 1024 * 1024)),
        "nul": write_object(repo, "blob", b"a\0b"),
        "config": write_object(repo, "blob", b"[core]\n\tfsmonitor = evil\n"),
    }
    git_dir = write_object(repo, "tree", raw_tree([("100644", b"config", blobs["config"])]))
    sub = write_object(
        repo,
        "tree",
        raw_tree([("100644", b"..", blobs["ok"]), ("100644", b"fine.txt", blobs["ok"])]),
    )
    root = write_object(
        repo,
        "tree",
        raw_tree(
            [
                ("100644", b".", blobs["ok"]),
                ("100644", b"..", blobs["ok"]),
                ("040000", b".GIT", git_dir),
                ("040000", b".git", git_dir),
                ("100644", b"a/b", blobs["ok"]),
                ("100644", b"dup", blobs["ok"]),
                ("100644", b"dup", blobs["other"]),
                ("120000", b"huge-link", blobs["huge"]),
                ("120000", b"nul-link", blobs["nul"]),
                ("100644", b"ok.txt", blobs["ok"]),
                ("040000", b"sub", sub),
                ("170000", b"weird", blobs["ok"]),
            ]
        ),
    )
    commit_tree(repo, root)
    return repo, blobs


def test_hostile_entries_are_refused_and_logged(
    daemon: GitDaemon, repos: Path, mnt: Path, home: Path, expect_log: ExpectLog
) -> None:
    for refusal in REFUSALS:
        expect_log(f"^{re.escape(refusal)}", level="WARNING", required=True)
    _repo, blobs = build_hostile_repo(repos)
    with mounted(daemon.url("hostile.git"), mnt, home) as mount:
        assert sorted(os.listdir(mnt)) == [".git", "dup", "ok.txt", "sub"]  # .git: ours
        assert sorted(os.listdir(mnt / "sub")) == ["fine.txt"]
        assert (mnt / "dup").read_bytes() == b"fine\n"
        assert (mnt / "sub" / "fine.txt").read_bytes() == b"fine\n"
        # the tree's .git directory was refused; the .git shown is the workspace's gitfile
        assert (mnt / ".git").read_bytes().startswith(b"gitdir: " + os.fsencode(home) + b"/")
        log = mount.log()
        for expected in REFUSALS:
            assert expected in log, expected
        assert blobs["huge"] not in daemon.wanted()
        assert blobs["config"] not in daemon.wanted()
