"""Where state lives by default: per user, never relative to where a command runs."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from artifactfs import home
from artifactfs.errors import UserError
from artifactfs.home import default_home


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("ARTIFACTFS_HOME", "XDG_DATA_HOME", "HOME"):
        monkeypatch.delenv(variable, raising=False)


def test_home_and_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    assert default_home() == Path("/home/someone/.local/share/artifactfs")
    monkeypatch.setenv("XDG_DATA_HOME", "/data")
    assert default_home() == Path("/data/artifactfs")
    monkeypatch.setenv("XDG_DATA_HOME", "relative")  # invalid per the XDG spec: ignored
    assert default_home() == Path("/home/someone/.local/share/artifactfs")
    monkeypatch.setenv("ARTIFACTFS_HOME", "/var/lib/artifactfs")
    assert default_home() == Path("/var/lib/artifactfs")


@pytest.mark.parametrize("value", [None, "", "relative/dir"])
def test_no_usable_home_falls_back_to_the_passwd_entry(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is not None:
        monkeypatch.setenv("HOME", value)
    expected = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".local" / "share" / "artifactfs"
    assert default_home() == expected


def test_no_home_at_all_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def unknown(uid: int) -> pwd.struct_passwd:
        raise KeyError(uid)

    monkeypatch.setattr(home.pwd, "getpwuid", unknown)
    with pytest.raises(UserError, match=r"\$HOME is not set .* set ARTIFACTFS_HOME"):
        default_home()
