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


def test_logging_never_floods_and_never_raises(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from artifactfs.logs import BURST, RateLimit, configure

    log_file = tmp_path / "mount.log"
    configure(log_file, 0)
    try:
        log = logging.getLogger("artifactfs.test")
        for number in range(1000):
            log.error("fetching blob %d failed: no space", number)
        log.warning("another kind")
        written = log_file.read_text().splitlines()
        assert len(written) == BURST + 1
        limit = RateLimit(burst=2, window=0.0)  # a window that is always over
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "m %d", (1,), None)
        assert limit.filter(record) and limit.filter(record)  # decided once per record
        for handler in logging.getLogger().handlers:
            handler.close()
        log_file.chmod(0o000)
        logging.getLogger().handlers[-1].stream = open(os.devnull)  # noqa: SIM115 - unwritable
        log.error("cannot be written")  # dropped, no "--- Logging error ---", no exception
        err = capsys.readouterr().err
        assert "Logging error" not in err and "Traceback" not in err
        assert err.count("fetching blob") == BURST
    finally:
        for handler in logging.getLogger().handlers[:]:
            handler.close()
            logging.getLogger().removeHandler(handler)


def test_notifications_of_a_closed_fuse_session_are_not_reported() -> None:
    import errno
    import logging

    from artifactfs.logs import SessionGone

    def record(name: str, msg: str, code: int) -> logging.LogRecord:
        try:
            raise OSError(code, "fuse_lowlevel_notify_inval_entry returned")
        except OSError:
            import sys

            return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, (), sys.exc_info())

    gone = SessionGone()
    moot = "Failed to submit invalidate_entry request for parent inode %d, name %s"
    assert not gone.filter(record("pyfuse3", moot, errno.EBADF))
    assert gone.filter(record("pyfuse3", moot, errno.EIO))  # anything else is still told
    assert gone.filter(record("artifactfs.x", moot, errno.EBADF))


def test_a_reply_to_an_interrupted_request_is_told_as_info() -> None:
    import logging

    from artifactfs.logs import SessionGone

    def record(name: str, msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)

    gone = SessionGone()
    interrupted = record("pyfuse3", "%s(): fuse_reply_* failed with %s", "fuse_read",
                         "No such file or directory")  # fmt: skip
    assert gone.filter(interrupted)
    assert (interrupted.levelno, interrupted.levelname) == (logging.INFO, "INFO")
    other = record("pyfuse3", "%s(): fuse_reply_* failed with %s", "fuse_read", "Broken pipe")
    assert gone.filter(other) and other.levelno == logging.ERROR
    ours = record("artifactfs.x", "fuse_read(): fuse_reply_* failed with No such file or directory")
    assert gone.filter(ours) and ours.levelno == logging.ERROR
