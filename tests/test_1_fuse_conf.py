"""Reading /etc/fuse.conf the way fusermount3 does, and refusing --allow-other before mounting.

Every case of ``user_allow_other`` was checked against the real fusermount3 3.14 (Debian 12):
a user mounting with ``allow_other`` succeeds exactly when the function says True.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from artifactfs.errors import UserError
from artifactfs.mount import options
from artifactfs.mount.options import check_allow_other, mount_options, user_allow_other


@pytest.mark.parametrize(
    ("conf", "allowed"),
    [
        (b"user_allow_other\n", True),
        (b"# comment\nmount_max = 1000\nuser_allow_other\n", True),
        (b"  user_allow_other  # trailing comment\n", True),
        (b"\tuser_allow_other\r\n", True),
        (b"", False),
        (b"#user_allow_other\n", False),  # Debian's default file
        (b"  # user_allow_other\n", False),
        (b"user_allow_other x\n", False),
        (b"user_allow_others\n", False),
        (b"USER_ALLOW_OTHER\n", False),
        (b"user_allow_other", False),  # no newline at the end: fusermount3 skips it
        (b"user_allow_other" + b" " * 238 + b"\n", True),  # 255 bytes: fits fgets' buffer
        (b"user_allow_other" + b" " * 239 + b"\n", False),  # 256: "line too long"
        (b"x" * 600 + b"\nuser_allow_other\n", True),  # a long line does not hide the next
        (b"user_allow_other #" + b"x" * 300 + b"\n", False),
        (b"user_allow_other\0x\nuser_allow_other\n", False),  # NUL: the next chunk is skipped
    ],
)
def test_user_allow_other_is_read_like_fusermount3(conf: bytes, allowed: bool) -> None:
    assert user_allow_other(conf) is allowed


def test_check_allow_other_as_a_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options.os, "getuid", lambda: 1000)
    conf = tmp_path / "fuse.conf"
    advice = (
        f"--allow-other needs a line 'user_allow_other' in {conf} (root can add it);"
        " without --allow-other only you can see the mount"
    )
    with pytest.raises(UserError) as refused:
        check_allow_other(conf)
    assert str(refused.value) == f"{advice}; there is no {conf}"
    conf.write_bytes(b"#user_allow_other\n")
    with pytest.raises(UserError) as refused:
        check_allow_other(conf)
    assert str(refused.value) == advice
    conf.write_bytes(b"user_allow_other\n")
    check_allow_other(conf)


def test_root_needs_no_fuse_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options.os, "getuid", lambda: 0)
    check_allow_other(tmp_path / "missing")


def test_mount_options_keep_default_permissions() -> None:
    assert mount_options(False) == {
        "fsname=artifactfs",
        "subtype=artifactfs",
        "ro",
        "default_permissions",
    }
    assert mount_options(True) == mount_options(False) | {"allow_other"}
