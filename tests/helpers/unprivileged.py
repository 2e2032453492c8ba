"""Run artifactfs as a user other than root, and put the machine back as it was afterwards.

Three facts shape this (see scripts/install-test-venv):

- the Python that runs pytest may be unreachable for other users (pyenv under /root), and so
  may the checkout (CI clones into ``mktemp -d``, mode 0700). A test user therefore runs the
  world-readable venv at ``$ARTIFACTFS_TEST_VENV`` (artifactfs's dependencies only) with
  ``PYTHONPATH`` on a copy of the tree under test, made per session: the code it runs is
  always the code being tested;
- ``/dev/fuse`` is 0600 where no udev runs, and ``/etc/fuse.conf`` decides ``allow_other``:
  a test changes them inside ``machine_for_users()``, which restores both in ``finally``
  and holds a lock so that two test sessions never fight over them. It first writes what it
  will restore to a journal, so that even a session killed with SIGKILL is undone by the next;
- commands run as the user through ``subprocess`` with ``user=``/``group=``/``extra_groups=``
  (what setpriv does: no PAM, no login shell) and a clean environment.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .mounts import force_unmount
from .waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
TEST_VENV = Path(os.environ.get("ARTIFACTFS_TEST_VENV", "/opt/artifactfs-tests/venv"))
FUSE_DEVICE = Path("/dev/fuse")
FUSE_CONF = Path("/etc/fuse.conf")
FUSERMOUNT = Path("/usr/bin/fusermount3")
LOCK_DIR = Path("/run/lock") if Path("/run/lock").is_dir() else Path("/tmp")
LOCK = LOCK_DIR / "artifactfs-tests-unprivileged.lock"
JOURNAL = LOCK_DIR / "artifactfs-tests-unprivileged.restore"
LOCK_WAIT_SECONDS = 90.0


def impossible_here() -> str | None:
    """Why users can never mount on this machine, or None. (A missing venv is not a reason:
    ``ensure_test_venv`` builds it.)"""
    if os.geteuid() != 0:
        return "needs root: it creates a test user and opens /dev/fuse to users"
    if not FUSE_DEVICE.exists():
        return "no /dev/fuse: this kernel or container has no FUSE"
    try:
        st = FUSERMOUNT.stat()
    except FileNotFoundError:
        return None  # scripts/install installs fuse3
    if st.st_uid != 0 or not st.st_mode & stat.S_ISUID:
        return f"{FUSERMOUNT} is not setuid root: users cannot mount here"
    if os.statvfs(FUSERMOUNT).f_flag & os.ST_NOSUID:
        return f"{FUSERMOUNT} is on a nosuid file system: users cannot mount here"
    return None


def ensure_test_venv() -> Path:
    """The venv's Python, after ``scripts/install-test-venv`` made sure it is up to date
    (instant when it is)."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "install-test-venv")],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if result.returncode != 0:
        raise AssertionError(f"scripts/install-test-venv failed:\n{result.stderr}")
    return TEST_VENV / "bin" / "python"


@contextlib.contextmanager
def source_copy(python: Path) -> Iterator[Path]:
    """The ``artifactfs`` package as it is now, where every user can read it; compiled, so
    that no user's command pays for compiling it (nor tries to write there)."""
    base = Path(tempfile.mkdtemp(prefix="artifactfs-src-"))
    try:
        shutil.copytree(
            ROOT / "artifactfs",
            base / "artifactfs",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        subprocess.run([str(python), "-m", "compileall", "-q", str(base)], check=True)
        for directory, _, files in os.walk(base):
            os.chmod(directory, 0o755)
            for name in files:
                os.chmod(os.path.join(directory, name), 0o644)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path

    @property
    def state_home(self) -> Path:
        """artifactfs's default state home for this user."""
        return self.home / ".local" / "share" / "artifactfs"


def ensure_user(name: str) -> User:
    """A non-root user with a home directory, created once (``useradd``) and kept."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        result = subprocess.run(
            ["useradd", "--create-home", "--shell", "/usr/sbin/nologin", "--comment",
             "artifactfs tests (unprivileged mounts)", name],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        try:  # another session may have created it meanwhile
            entry = pwd.getpwnam(name)
        except KeyError:
            raise AssertionError(f"useradd {name} failed: {result.stderr}") from None
    home = Path(entry.pw_dir)
    if not home.is_dir():
        home.mkdir(mode=0o755, parents=True)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    return User(name, entry.pw_uid, entry.pw_gid, home)


@dataclass(frozen=True)
class Runner:
    """Runs ``artifactfs`` (and anything else) as a user, from the test venv and the copy."""

    python: Path
    source: Path

    def env(self, user: User, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {
            "HOME": str(user.home),
            "USER": user.name,
            "LOGNAME": user.name,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(self.source),
            "PYTHONSAFEPATH": "1",  # never import from the current directory
            **(extra or {}),
        }

    def _as(self, user: User, env: dict[str, str] | None) -> dict[str, Any]:
        return {
            "user": user.uid,
            "group": user.gid,
            "extra_groups": [],
            "env": self.env(user, env),
            "cwd": str(user.home),
            "stdin": subprocess.DEVNULL,
        }

    def run(
        self, user: User, *argv: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            list(argv), capture_output=True, timeout=timeout, check=False, **self._as(user, env)
        )

    def cli(
        self, user: User, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        return self.run(user, str(self.python), "-m", "artifactfs", *args, env=env, timeout=timeout)

    def start(
        self, user: User, *args: str, log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """``artifactfs ARGS`` in the background, its output in ``log``."""
        with open(log, "ab") as output:
            return subprocess.Popen(
                [str(self.python), "-m", "artifactfs", *args],
                stdout=output,
                stderr=subprocess.STDOUT,
                **self._as(user, env),
            )


# -- what the users leave behind -----------------------------------------------------------


def processes_of(*users: User) -> list[int]:
    uids = {str(user.uid) for user in users}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:") and line.split()[1] in uids:
                found.append(int(entry.name))
    return found


def mounts_of(*users: User) -> list[Path]:
    """FUSE mounts that these users made."""
    owners = {f"user_id={user.uid}" for user in users}
    with open("/proc/self/mountinfo") as table:
        lines = [line.split() for line in table]
    return [Path(f[4]) for f in lines if owners & set(f[-1].split(","))]


def clean_up(*users: User) -> tuple[list[int], list[Path]]:
    """Kill every process of these users and unmount their mounts; return what was there."""
    processes, mounts = processes_of(*users), mounts_of(*users)
    for pid in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not processes_of(*users), 10, "the test users' processes to end")
    for path in mounts:
        force_unmount(path)
    return processes, mounts


# -- the machine -------------------------------------------------------------------------------


class Machine:
    """``/dev/fuse`` open to users, and ``/etc/fuse.conf`` as a test wants it."""

    def __init__(self, saved: dict[str, Any]) -> None:
        self.saved = saved

    def original_conf(self) -> bytes:
        text = self.saved["fuse_conf"]
        return base64.b64decode(text) if text is not None else b""

    def set_user_allow_other(self, allowed: bool, extra: bytes = b"") -> None:
        """Rewrite fuse.conf: the original with any ``user_allow_other`` commented out, then
        ``extra``, then the line itself if ``allowed``."""
        lines = []
        for line in self.original_conf().splitlines():
            active = line.split(b"#", 1)[0].strip() == b"user_allow_other"
            lines.append(b"#" + line if active else line)
        text = b"\n".join(lines) + b"\n" + extra
        if allowed:
            text += b"user_allow_other\n"
        _write_in_place(FUSE_CONF, text, self.saved["fuse_conf_mode"] or 0o644)


@contextlib.contextmanager
def machine_for_users() -> Iterator[Machine]:
    """Hold the machine-wide lock, open /dev/fuse to users; restore everything in finally."""
    lock = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        wait_for(lambda: _try_lock(lock), LOCK_WAIT_SECONDS, "another test session's lock")
        if JOURNAL.exists():  # a session died without restoring: do it now
            _restore(json.loads(JOURNAL.read_text()))
        saved = _save()
        try:
            FUSE_DEVICE.chmod(0o666)
            yield Machine(saved)
        finally:
            _restore(saved)
    finally:
        os.close(lock)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _save() -> dict[str, Any]:
    try:
        conf: bytes | None = FUSE_CONF.read_bytes()
        conf_mode: int | None = stat.S_IMODE(FUSE_CONF.stat().st_mode)
    except FileNotFoundError:
        conf, conf_mode = None, None
    saved = {
        "dev_fuse_mode": stat.S_IMODE(FUSE_DEVICE.stat().st_mode),
        "fuse_conf": base64.b64encode(conf).decode() if conf is not None else None,
        "fuse_conf_mode": conf_mode,
    }
    temporary = JOURNAL.with_suffix(".tmp")
    temporary.write_text(json.dumps(saved))
    os.replace(temporary, JOURNAL)
    return saved


def _restore(saved: dict[str, Any]) -> None:
    FUSE_DEVICE.chmod(saved["dev_fuse_mode"])
    if saved["fuse_conf"] is None:
        FUSE_CONF.unlink(missing_ok=True)
    else:
        _write_in_place(FUSE_CONF, base64.b64decode(saved["fuse_conf"]), saved["fuse_conf_mode"])
    JOURNAL.unlink(missing_ok=True)


def _write_in_place(path: Path, data: bytes, mode: int) -> None:
    """Same inode, owner and mode (a package manager or an admin may be watching it)."""
    with open(path, "wb") as file:
        file.write(data)
    path.chmod(mode)
