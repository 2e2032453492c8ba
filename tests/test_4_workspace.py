"""A writable git mount (a workspace) through the kernel: every change a program can make, the
errno of every refusal, what survives a remount and a ``kill -9`` of the worker."""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest
import xattr

from artifactfs.overlay import journal
from tests.conftest import hub_env
from tests.helpers.checklogs import ExpectLog
from tests.helpers.gitrepos import Repo
from tests.helpers.hub import HubServer
from tests.helpers.mounts import errno_of, force_unmount, mounted, run_cli
from tests.helpers.servers import GitDaemon
from tests.helpers.waiting import wait_for

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
COMMIT_TIME_NS = 1_700_000_000 * 1_000_000_000


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, bytes(old), AT_FDCWD, bytes(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def test_create_write_read_and_remount(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    url = daemon.url("sample.git")
    with mounted(url, mnt, home) as mount:
        assert mount.xattr("writable") == "1"
        assert mount.xattr("changed") == "0"
        os.mkdir(mnt / "made")
        (mnt / "made" / "new.txt").write_bytes(b"hello\n")
        assert (mnt / "made" / "new.txt").read_bytes() == b"hello\n"
        made_ino = os.stat(mnt / "made" / "new.txt").st_ino
        assert made_ino >= 1 << 62
        os.symlink("made/new.txt", mnt / "to-new")
        assert os.readlink(mnt / "to-new") == "made/new.txt"
        assert (mnt / "to-new").read_bytes() == b"hello\n"
        assert mount.xattr("changed") == "3"
        report = json.loads(run_cli("status", str(mnt), "--json", home=home).stdout)
        assert (report["writable"], report["changed"]) == (1, 3)
    with mounted(url, mnt, home) as mount:
        assert (mnt / "made" / "new.txt").read_bytes() == b"hello\n"
        assert os.stat(mnt / "made" / "new.txt").st_ino == made_ino
        assert os.readlink(mnt / "to-new") == "made/new.txt"
        assert mount.xattr("changed") == "3"


def test_copy_up_keeps_the_inode_and_serves_the_new_bytes(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    with mounted(daemon.url("sample.git"), mnt, home):
        readme = mnt / "README.md"
        before = os.stat(readme)
        assert before.st_mtime_ns == COMMIT_TIME_NS
        with open(readme, "rb") as reader:  # opened before the copy-up, read after it
            with open(readme, "r+b") as writer:
                writer.seek(2)
                writer.write(b"S")
            assert reader.read() == b"# Sample\n"
        after = os.stat(readme)
        assert after.st_ino == before.st_ino
        assert after.st_size == before.st_size
        assert after.st_mtime_ns > before.st_mtime_ns
        big = (mnt / "data" / "big.bin").read_bytes()
        os.chmod(mnt / "data" / "big.bin", 0o600)  # a setattr copies up, bytes unchanged
        assert (mnt / "data" / "big.bin").read_bytes() == big
        st = os.stat(mnt / "data" / "big.bin")
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime_ns == COMMIT_TIME_NS


def test_truncate_append_and_direct_io(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    with mounted(daemon.url("sample.git"), mnt, home):
        binary = mnt / "data" / "binary.dat"
        original = binary.read_bytes()
        os.truncate(binary, 100)
        assert binary.read_bytes() == original[:100]
        with open(binary, "r+b") as f:
            os.ftruncate(f.fileno(), 300)
        assert binary.read_bytes() == original[:100] + bytes(200)
        with open(mnt / "README.md", "wb") as f:  # O_TRUNC
            f.write(b"new")
        assert (mnt / "README.md").read_bytes() == b"new"

        fd = os.open(mnt / "empty.txt", os.O_WRONLY | os.O_APPEND)
        try:
            os.pwrite(fd, b"one", 0)  # O_APPEND wins over the offset (Linux)
            os.write(fd, b"two")
        finally:
            os.close(fd)
        assert (mnt / "empty.txt").read_bytes() == b"onetwo"

        block = mmap.mmap(-1, 8192)  # page-aligned, as O_DIRECT wants
        block.write(b"d" * 8192)
        fd = os.open(mnt / "direct.bin", os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o644)
        try:
            assert os.pwritev(fd, [block], 0) == 8192
            back = mmap.mmap(-1, 8192)
            assert os.preadv(fd, [back], 0) == 8192
            assert bytes(back) == b"d" * 8192
        finally:
            os.close(fd)
        assert (mnt / "direct.bin").read_bytes() == b"d" * 8192


def test_rename_cases_answer_like_a_local_file_system(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    with mounted(daemon.url("sample.git"), mnt, home) as mount:
        deep_ino = os.stat(mnt / "deep").st_ino
        os.rename(mnt / "deep", mnt / "deeper")  # a lower directory: nothing is copied
        assert os.stat(mnt / "deeper").st_ino == deep_ino
        assert (mnt / "deeper/a/b/c/d/leaf.txt").read_bytes() == b"leaf\n"
        assert not (mnt / "deep").exists()
        assert os.listdir(home / "workspaces" / os.listdir(home / "workspaces")[0] / "upper") == []

        os.mkdir(mnt / "e1")
        os.mkdir(mnt / "e2")
        (mnt / "f1").write_bytes(b"1")
        (mnt / "f2").write_bytes(b"2")

        assert errno_of(lambda: renameat2(mnt / "f1", mnt / "f2", RENAME_NOREPLACE)) == (
            errno.EEXIST
        )
        renameat2(mnt / "f1", mnt / "f2", RENAME_EXCHANGE)
        assert (mnt / "f1").read_bytes() == b"2" and (mnt / "f2").read_bytes() == b"1"
        renameat2(mnt / "f1", mnt / "e1", RENAME_EXCHANGE)  # a file and a directory
        assert (mnt / "e1").is_file() and (mnt / "f1").is_dir()
        renameat2(mnt / "f1", mnt / "e1", RENAME_EXCHANGE)
        assert errno_of(lambda: renameat2(mnt / "f1", mnt / "nothing", RENAME_EXCHANGE)) == (
            errno.ENOENT
        )

        os.rename(mnt / "f1", mnt / "f2")  # over an existing file
        assert (mnt / "f2").read_bytes() == b"2" and not (mnt / "f1").exists()
        os.rename(mnt / "e1", mnt / "e2")  # over an empty directory
        assert not (mnt / "e1").exists() and (mnt / "e2").is_dir()
        assert errno_of(lambda: os.rename(mnt / "e2", mnt / "deeper")) == errno.ENOTEMPTY
        assert errno_of(lambda: os.rename(mnt / "f2", mnt / "e2")) == errno.EISDIR
        assert errno_of(lambda: os.rename(mnt / "e2", mnt / "f2")) == errno.ENOTDIR
        assert errno_of(lambda: os.rename(mnt / "deeper", mnt / "deeper/a/inside")) == (
            errno.EINVAL
        )
        os.rename(mnt / "README.md", mnt / "deeper" / "a" / "README.md")  # across directories
        assert (mnt / "deeper/a/README.md").read_bytes() == b"# sample\n"
        assert sorted(os.listdir(mnt / "deeper" / "a")) == ["README.md", "b"]
        assert mount.check_alive() is None


def test_removal_and_the_refusals(daemon: GitDaemon, sample: Repo, mnt: Path, home: Path) -> None:
    with mounted(daemon.url("sample.git"), mnt, home):
        assert errno_of(lambda: os.rmdir(mnt / "deep")) == errno.ENOTEMPTY
        assert errno_of(lambda: os.rmdir(mnt / "README.md")) == errno.ENOTDIR
        assert errno_of(lambda: os.unlink(mnt / "deep")) == errno.EISDIR
        assert errno_of(lambda: os.link(mnt / "README.md", mnt / "hard")) == errno.EPERM
        device = stat.S_IFCHR | 0o600
        assert errno_of(lambda: os.mknod(mnt / "dev", device, os.makedev(1, 3))) == errno.EPERM
        assert errno_of(lambda: os.mknod(mnt / "blk", stat.S_IFBLK | 0o600)) == errno.EPERM
        os.chown(mnt / "README.md", os.getuid(), os.getgid())  # unchanged: fine
        os.mknod(mnt / "regular", stat.S_IFREG | 0o600)
        assert stat.S_IMODE(os.stat(mnt / "regular").st_mode) == 0o600

        with open(mnt / "bin" / "tool.sh", "rb") as held:  # unlinked while open
            os.unlink(mnt / "bin" / "tool.sh")
            assert os.fstat(held.fileno()).st_nlink == 0
            assert held.read() == b"#!/bin/sh\necho tool\n"
        assert not (mnt / "bin" / "tool.sh").exists()
        for path in ("deep/a/b/c/d/leaf.txt",):
            os.unlink(mnt / path)
        for path in ("deep/a/b/c/d", "deep/a/b/c", "deep/a/b", "deep/a", "deep"):
            os.rmdir(mnt / path)
        assert not (mnt / "deep").exists()
        assert errno_of(lambda: os.stat(mnt / "deep")) == errno.ENOENT


def test_modes_times_xattrs_and_statfs(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    with mounted(daemon.url("sample.git"), mnt, home):
        os.chmod(mnt / "deep", 0o700)
        assert stat.S_IMODE(os.stat(mnt / "deep").st_mode) == 0o700
        os.utime(mnt / "deep", ns=(5_000_000_000, 6_000_000_000))
        assert os.stat(mnt / "deep").st_mtime_ns == 6_000_000_000
        os.utime(mnt / "README.md", ns=(1_000_000_000, 2_000_000_000))
        st = os.stat(mnt / "README.md")
        assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000, 2_000_000_000)
        os.utime(mnt / "README.md")  # UTIME_NOW
        assert os.stat(mnt / "README.md").st_mtime_ns > 2_000_000_000
        os.utime(
            mnt / "links" / "to-readme", ns=(7_000_000_000, 8_000_000_000), follow_symlinks=False
        )
        assert os.lstat(mnt / "links" / "to-readme").st_mtime_ns == 8_000_000_000

        path = str(mnt / "README.md")
        xattr.setxattr(path, "user.mine", b"value")
        assert xattr.getxattr(path, "user.mine") == b"value"
        assert "user.mine" in xattr.listxattr(path)
        xattr.removexattr(path, "user.mine")
        assert errno_of(lambda: xattr.getxattr(path, "user.mine")) == errno.ENODATA
        assert errno_of(lambda: xattr.setxattr(path, "user.artifactfs.oid", b"x")) == errno.EPERM
        # a name the mount never sets is absent, whatever the upper file holds (the kernel asks
        # for security.capability before every write: answered without touching the file)
        (upper,) = home.rglob(f"upper/{os.stat(path).st_ino}")
        os.setxattr(upper, "user.artifactfs.oid", b"forged")
        assert errno_of(lambda: xattr.getxattr(path, "user.artifactfs.oid")) == errno.ENODATA
        assert errno_of(lambda: xattr.getxattr(path, "security.capability")) == errno.ENODATA
        lower = str(mnt / "unicod\u00e9.txt")
        assert (
            xattr.getxattr(lower, "user.artifactfs.oid")
            == sample.blob_id("unicod\u00e9.txt").encode()
        )

        ours, theirs = os.statvfs(mnt), os.statvfs(home)
        assert (ours.f_blocks, ours.f_frsize) == (theirs.f_blocks, theirs.f_frsize)
        assert abs(ours.f_bavail - theirs.f_bavail) < 64 << 20 // theirs.f_frsize
        assert ours.f_bavail > 0


def test_read_only_refuses_with_erofs(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    with mounted(daemon.url("sample.git"), mnt, home, "--read-only") as mount:
        assert mount.xattr("writable") == "0"
        assert errno_of(lambda: (mnt / "new").write_bytes(b"x")) == errno.EROFS
        assert errno_of(lambda: os.open(mnt / "README.md", os.O_RDWR)) == errno.EROFS
        assert errno_of(lambda: os.rename(mnt / "deep", mnt / "x")) == errno.EROFS


def test_untouched_files_keep_the_inodes_of_a_read_only_mount(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    url = daemon.url("sample.git")
    paths = ["README.md", "deep/a/b/c/d/leaf.txt", "links/to-dir", "bin"]
    with mounted(url, mnt, home, "--read-only"):
        seen = {p: os.lstat(mnt / p) for p in paths}
    with mounted(url, mnt, home):
        for p in paths:
            st = os.lstat(mnt / p)
            assert (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns) == (
                seen[p].st_ino,
                seen[p].st_mode,
                seen[p].st_size,
                seen[p].st_mtime_ns,
            ), p


def test_fsynced_data_survives_kill_9(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    url = daemon.url("sample.git")
    payload = os.urandom(300_000)
    with mounted(url, mnt, home) as mount:
        os.mkdir(mnt / "kept")
        with open(mnt / "kept" / "data.bin", "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        with open(mnt / "README.md", "ab") as f:
            f.write(b"appended\n")
            os.fsync(f.fileno())
        os.rename(mnt / "deep", mnt / "moved")
        fd = os.open(mnt / "moved", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        mount.process.send_signal(signal.SIGKILL)
        mount.process.wait(10)
        force_unmount(mnt)
    with mounted(url, mnt, home) as mount:
        assert (mnt / "kept" / "data.bin").read_bytes() == payload
        assert (mnt / "README.md").read_bytes() == b"# sample\nappended\n"
        assert (mnt / "moved/a/b/c/d/leaf.txt").read_bytes() == b"leaf\n"
        assert not (mnt / "deep").exists()
        assert mount.xattr("changed") == "4"  # kept, kept/data.bin, README.md, moved


@pytest.mark.parametrize("size", [0, 4096, 1 << 20])
def test_a_written_file_reads_back_whole(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path, size: int
) -> None:
    data = os.urandom(size)
    with mounted(daemon.url("sample.git"), mnt, home):
        (mnt / "out.bin").write_bytes(data)
        assert (mnt / "out.bin").read_bytes() == data
        assert os.stat(mnt / "out.bin").st_size == size


def test_every_change_is_in_the_journal(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    with mounted(daemon.url("sample.git"), mnt, home):
        database = journal.hook_files_of(next((home / "workspaces").iterdir()) / "overlay.sqlite")
        token, _ = journal.changed_since(database, "none")
        (mnt / "new.txt").write_bytes(b"x")
        with open(mnt / "README.md", "ab") as f:
            f.write(b"more")
        os.rename(mnt / "deep", mnt / "deeper")
        os.unlink(mnt / "empty.txt")
        _, changed = journal.changed_since(database, token)
        assert changed == [
            b"README.md",
            b"deep",
            b"deep/",
            b"deeper",
            b"deeper/",
            b"empty.txt",
            b"new.txt",
        ]


def test_a_hub_mount_is_read_only_unless_writable(
    hub: HubServer, mnt: Path, home: Path, tmp_path: Path
) -> None:
    hub.create_repo("org/small", {"config.json": b'{"a": 1}\n'})
    env = hub_env(hub, tmp_path)
    with mounted("hf://org/small", mnt, home, env=env) as mount:
        assert mount.xattr("writable") == "0"
        assert errno_of(lambda: os.open(mnt / "config.json", os.O_RDWR)) == errno.EROFS
    with mounted("hf://org/small", mnt, home, "--writable", env=env) as mount:
        assert mount.xattr("writable") == "1"
        with open(mnt / "config.json", "r+b") as f:  # copied up from the verified file
            f.seek(6)
            f.write(b"2")
        assert (mnt / "config.json").read_bytes() == b'{"a": 2}\n'
        assert mount.xattr("changed") == "1"


def test_a_hub_copy_up_never_keeps_bytes_that_fail_their_digest(
    hub: HubServer, mnt: Path, home: Path, tmp_path: Path, expect_log: ExpectLog
) -> None:
    """The first copy of an LFS file the Hub serves corrupt is refused by its sha256 and
    fetched again: the workspace starts from the right bytes, never from the served ones."""
    expect_log(r"does not match|did not match", level="ERROR")
    weights = bytes(range(256)) * 8192  # 2 MiB: stored as LFS
    hub.create_repo("org/w", {"w.bin": weights})
    hub.fault_corrupt(path="w.bin", times=1)
    with mounted("hf://org/w", mnt, home, "--writable", env=hub_env(hub, tmp_path)):
        with open(mnt / "w.bin", "ab") as f:  # the copy-up
            f.write(b"+")
        upper = next((home / "workspaces").iterdir()) / "upper"
        (copied,) = list(upper.iterdir())
        assert copied.read_bytes() == weights + b"+"
        assert (mnt / "w.bin").read_bytes() == weights + b"+"


def test_an_unlinked_open_file_lives_until_closed_then_its_upper_file_goes(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    with mounted(daemon.url("sample.git"), mnt, home):
        upper = next((home / "workspaces").iterdir()) / "upper"
        with open(mnt / "scratch", "w+b") as f:
            f.write(b"before")
            os.unlink(mnt / "scratch")
            f.write(b" after")
            f.seek(0)
            assert f.read() == b"before after"
            assert os.fstat(f.fileno()).st_nlink == 0
            assert len(os.listdir(upper)) == 1
            (mnt / "scratch").write_bytes(b"another")  # the name is free again
        wait_for(lambda: len(os.listdir(upper)) == 1, 10, "the unlinked upper file to go")
        assert (mnt / "scratch").read_bytes() == b"another"


def test_owners_fifos_directory_times_and_xattrs_survive_a_remount(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    url = daemon.url("sample.git")
    with mounted(url, mnt, home) as mount:
        before = os.stat(mnt / "README.md")
        os.chown(mnt / "README.md", os.getuid(), os.getgid())  # the same owner: no change
        os.chown(mnt / "deep", os.getuid(), -1)
        assert mount.xattr("changed") == "0"
        os.chown(mnt / "README.md", 4321, 8765)  # root: allowed, and no copy-up
        st = os.stat(mnt / "README.md")
        assert (st.st_uid, st.st_gid, st.st_ino) == (4321, 8765, before.st_ino)
        assert (mnt / "README.md").read_bytes() == b"# sample\n"
        assert not os.listdir(home / "workspaces" / os.listdir(home / "workspaces")[0] / "upper")
        os.chown(mnt / "deep", -1, 99)  # chgrp of a lower directory
        assert (os.stat(mnt / "deep").st_uid, os.stat(mnt / "deep").st_gid) == (os.getuid(), 99)
        os.lchown(mnt / "links" / "to-readme", 11, 12)
        assert os.lstat(mnt / "links" / "to-readme").st_uid == 11
        assert os.stat(mnt / "links" / "to-readme").st_uid == 4321  # followed: the file's
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=mnt, capture_output=True, check=True, timeout=60
        )
        assert status.stdout == b""  # owners are not content: git sees no change

        os.utime(mnt / "deep", ns=(1_002_003_000, 4_005_006_000))
        os.mkfifo(mnt / "pipe", 0o640)
        st = os.stat(mnt / "pipe")
        assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
        assert os.stat(mnt).st_mtime_ns > COMMIT_TIME_NS  # an entry made: the root moved
        reader = os.open(mnt / "pipe", os.O_RDONLY | os.O_NONBLOCK)
        try:
            writer = os.open(mnt / "pipe", os.O_WRONLY)
            os.write(writer, b"through the pipe")
            os.close(writer)
            assert os.read(reader, 100) == b"through the pipe"
        finally:
            os.close(reader)
        os.mknod(mnt / "sock", stat.S_IFSOCK | 0o600)
        assert stat.S_ISSOCK(os.stat(mnt / "sock").st_mode)

        xattr.setxattr(str(mnt / "deep"), "user.dir", b"\x00kept")
        assert xattr.getxattr(str(mnt / "deep"), "user.dir") == b"\x00kept"
        assert "user.dir" in xattr.listxattr(str(mnt / "deep"))
        xattr.setxattr(str(mnt / "deep"), "user.gone", b"x")
        xattr.removexattr(str(mnt / "deep"), "user.gone")
        gone = errno_of(lambda: xattr.getxattr(str(mnt / "deep"), "user.gone"))
        assert gone == errno.ENODATA
        assert errno_of(lambda: xattr.removexattr(str(mnt / "deep"), "user.no")) == errno.ENODATA
        # trusted.* (root only, checked by the kernel): on a symlink itself and on a file
        link = mnt / "links" / "to-readme"
        os.setxattr(link, "trusted.t", b"on the link", follow_symlinks=False)
        os.setxattr(mnt / "README.md", "trusted.t", b"on the file")
        assert os.getxattr(link, "trusted.t", follow_symlinks=False) == b"on the link"
        assert os.getxattr(link, "trusted.t") == b"on the file"
        assert "trusted.t" in os.listxattr(link, follow_symlinks=False)
        assert errno_of(lambda: os.setxattr(link, "security.x", b"1")) == errno.ENOTSUP
    with mounted(url, mnt, home):
        st = os.stat(mnt / "README.md")
        assert (st.st_uid, st.st_gid) == (4321, 8765)
        st = os.stat(mnt / "deep")
        assert (st.st_atime_ns, st.st_mtime_ns, st.st_gid) == (1_002_003_000, 4_005_006_000, 99)
        assert stat.S_ISFIFO(os.stat(mnt / "pipe").st_mode)
        assert xattr.getxattr(str(mnt / "deep"), "user.dir") == b"\x00kept"
        link = mnt / "links" / "to-readme"
        assert os.getxattr(link, "trusted.t", follow_symlinks=False) == b"on the link"
        names = xattr.listxattr(str(mnt / "deep"))
        assert "user.dir" in names and "user.gone" not in names
        os.unlink(mnt / "pipe")
        assert not (mnt / "pipe").exists()
