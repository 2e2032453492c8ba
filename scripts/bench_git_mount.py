"""Benchmark: time until an artifactfs mount of a git repository is usable, against git clone.

A repository of source-like files with a long history is generated once with ``git fast-import``
and cached under ``bench-work/`` (keyed by its parameters), then served by a real ``git daemon``
on 127.0.0.1. Each run measures, interleaved and in rotating order:

- artifactfs, cold: a fresh empty ``ARTIFACTFS_HOME`` and mount directory; the time from spawning
  ``artifactfs mount git://... MNT`` until the mount point appears in ``/proc/self/mountinfo``,
  and until ``os.listdir(MNT)`` returns the expected root listing (the listing waits on the ready
  gate, so it returns once the tree is prepared);
- peer 1: ``git clone --depth 1 --filter=blob:none --no-checkout`` (metadata only);
- peer 2: ``git clone --depth 1`` (metadata, contents and a checkout);
- daemon, warm: ``artifactfs add-repo NAME git://... --async`` against one ``artifactfs daemon``
  started before the first round and stopped after the last (a new NAME every round, but the
  commit's snapshot is in its home from the rounds before); the time from spawning the command
  until it exits (its mount must then be in the mount table) and until ``os.listdir`` of the
  mount, issued as it exits, returns the expected root; then ``remove-repo`` (untimed);
- daemon, cold: the same against a daemon started for this round on an empty home (started
  before the clock starts, stopped after).

Medians and the ratios artifactfs/peer are printed as a markdown table and written into the
results section of ``docs/benchmarks.md`` (unless ``--no-write``). Run it with ``scripts/bench``.
Every daemon is stopped with SIGTERM however the benchmark ends; leftover workers are killed
and mounts under its home detached.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import random
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench-work"
DOC = ROOT / "docs" / "benchmarks.md"
PYCACHE = WORK / "pycache"
"""Bytecode cache of the measured artifactfs processes: an installed program has one, and
``PYTHONDONTWRITEBYTECODE`` in the environment would otherwise make every start of the
editable install recompile it. The warm-up round fills it."""
RESULTS_START = "<!-- bench-git-mount:results:start -->"
RESULTS_END = "<!-- bench-git-mount:results:end -->"

GENERATOR_VERSION = 1
"""Bump when the generated repository changes for the same parameters (new cache key)."""
SEED = 5000
GOAL_PEER1 = 1.5
GOAL_PEER2 = 0.3
GOALS_ADD = (0.5, 1.0)
"""Seconds ``add-repo --async`` may take (median): the target, and the issue's ceiling."""
TIMES = "\u00d7"
MOUNT_TIMEOUT = 60.0
FUSE_TYPE = "fuse.artifactfs"
READY_TIMEOUT = 300.0
CLONE_TIMEOUT = 600.0

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
    "LC_ALL": "C",
}
"""Keep the user's git configuration out of both the server and the clients."""

SERVE_CONFIG = {
    "uploadpack.allowFilter": "true",
    "uploadpack.allowAnySHA1InWant": "true",
    "transfer.advertiseObjectInfo": "true",
}


class BenchError(Exception):
    """An expected failure: reported as one line, without a traceback."""


# -- running commands ----------------------------------------------------------------------


def git_env() -> dict[str, str]:
    return {**os.environ, **GIT_ENV}


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git and return its stdout; a failure becomes a BenchError."""
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, env=git_env(), check=False
        )
    except FileNotFoundError:
        raise BenchError("git is not installed") from None
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1:] or ["no message"]
        raise BenchError(f"git {' '.join(args[:2])} failed: {detail[0]}")
    return result.stdout


def require_tools() -> Path:
    """Check the commands the benchmark needs; return the artifactfs executable."""
    for tool in ("git", "fusermount3"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed (scripts/install installs it)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise BenchError("/dev/fuse is missing or not accessible: cannot mount FUSE filesystems")
    beside = Path(sys.executable).parent / "artifactfs"
    found = beside if beside.exists() else shutil.which("artifactfs")
    if found is None:
        raise BenchError("artifactfs is not installed: run scripts/bench (it installs .venv)")
    return Path(found)


# -- the generated repository --------------------------------------------------------------

_TOP_DIRS = ["src", "lib", "tests", "docs", "tools", "examples", "include", "scripts"]
_ROOT_FILES = ["README.md", "LICENSE", "Makefile", "pyproject.toml", "setup.cfg", "CHANGELOG.md"]
_EXTENSIONS = [".py"] * 6 + [".c", ".h", ".rs", ".go", ".js", ".ts", ".md", ".json", ".txt"]
_LINE_TEMPLATES = [
    "{i}def {a}_{b}({c}, {d}={n}):\n",
    "{i}    {a} = {b}.{c}({d}, {n})\n",
    "{i}    if {a} is not None and {b} > {n}:\n",
    "{i}        return {a}[{b}] + {c}\n",
    "{i}    for {a} in {b}.{c}():\n",
    "{i}    # {a} {b} {c} {d}: keep the {a} of {c} until {d} is done\n",
    "{i}class {A}{B}({C}):\n",
    '{i}    """{A} the {b} of a {c}, or {d} when there is none."""\n',
    "{i}    self.{a}_{b} = {c}_{d}({n}, {a}={b})\n",
    '{i}    raise {A}Error(f"{b} {{{c}!r}} is not a {d}")\n',
    "{i}import {a}.{b}\n",
    "{i}from {a} import {b}, {c}\n",
    "\n",
    "{i}    {a}.{b}({c}={d}, {n}: {n})\n",
]


@dataclass(frozen=True)
class RepoParams:
    """What the generated repository depends on; its cache key."""

    files: int
    commits: int

    @property
    def key(self) -> str:
        return f"repo-v{GENERATOR_VERSION}-seed{SEED}-f{self.files}-c{self.commits}"


@dataclass(frozen=True)
class RepoInfo:
    """A generated bare repository, ready to serve, and what a mount of it must show."""

    base: Path
    """The directory ``git daemon`` serves (``--base-path``); holds ``repo.git``."""
    name: str
    tip: str
    root_names: list[str]
    files: int
    directories: int
    content_bytes: int
    pack_bytes: int
    commits: int

    @property
    def path(self) -> Path:
        return self.base / self.name


class SourceText:
    """A deterministic pool of source-like lines to build file contents from."""

    def __init__(self, rng: random.Random, words: int = 3000, lines: int = 40000) -> None:
        letters = "abcdefghijklmnopqrstuvwxyz"
        self.words = sorted(
            {"".join(rng.choices(letters, k=rng.randint(3, 10))) for _ in range(words)}
        )
        self.lines = [self._line(rng) for _ in range(lines)]
        self.mean_line = sum(map(len, self.lines)) / len(self.lines)

    def _line(self, rng: random.Random) -> str:
        a, b, c, d = rng.sample(self.words, 4)
        return rng.choice(_LINE_TEMPLATES).format(
            i="    " * rng.randint(0, 2),
            a=a,
            b=b,
            c=c,
            d=d,
            A=a.capitalize(),
            B=b.capitalize(),
            C=c.capitalize(),
            n=rng.randint(0, 4096),
        )

    def content(self, rng: random.Random, size: int) -> list[str]:
        """About ``size`` bytes of lines."""
        return rng.choices(self.lines, k=max(1, round(size / self.mean_line)))

    def edit(self, rng: random.Random, lines: list[str]) -> None:
        """Change a few lines in place: replace some, insert or delete one now and then."""
        for _ in range(rng.randint(1, 4)):
            where = rng.randrange(len(lines))
            roll = rng.random()
            if roll < 0.6:
                lines[where] = rng.choice(self.lines)
            elif roll < 0.85 or len(lines) < 2:
                lines.insert(where, rng.choice(self.lines))
            else:
                del lines[where]


def file_size(rng: random.Random) -> int:
    """Source-like sizes: log-normal around 3.5 KB, from 200 bytes to 64 KB."""
    return int(min(65536, max(200, rng.lognormvariate(math.log(3500), 1.0))))


def plan_paths(rng: random.Random, words: Sequence[str], files: int) -> list[str]:
    """``files`` distinct paths over nested directories, in the order they are added."""
    directories = list(_TOP_DIRS)
    depth = dict.fromkeys(directories, 1)
    taken: set[str] = set(directories)
    for _ in range(max(0, files // 25 - len(directories))):
        parent = rng.choice([d for d in directories if depth[d] < 5])
        name = f"{parent}/{rng.choice(words)}"
        if name not in taken:
            taken.add(name)
            directories.append(name)
            depth[name] = depth[parent] + 1
    root_files = _ROOT_FILES[: min(len(_ROOT_FILES), files)]
    paths: list[str] = []
    while len(paths) + len(root_files) < files:
        path = f"{rng.choice(directories)}/{rng.choice(words)}_{rng.choice(words)}"
        path += rng.choice(_EXTENSIONS)
        if path not in taken:
            taken.add(path)
            paths.append(path)
    return root_files + paths


def write_history(stream: IO[bytes], params: RepoParams) -> None:
    """A ``git fast-import`` stream: ``params.commits`` commits on main adding ``params.files``
    files in order, each commit also editing one or two files added earlier."""
    rng = random.Random(SEED)
    text = SourceText(rng)
    paths = plan_paths(rng, text.words, params.files)
    contents: dict[str, list[str]] = {}
    existing: list[str] = []
    when = 1_600_000_000
    for number in range(params.commits):
        start = -(-number * params.files // params.commits)
        end = -(-(number + 1) * params.files // params.commits)
        added = paths[start:end]
        changed: list[str] = []
        for path in added:
            contents[path] = text.content(rng, file_size(rng))
        if existing:
            for _ in range(1 + (rng.random() < 0.5)):
                path = rng.choice(existing)
                text.edit(rng, contents[path])
                changed.append(path)
        existing.extend(added)
        when += rng.randint(60, 86400)
        message = f"Change {number + 1}: add {len(added)} files, edit {len(changed)}\n".encode()
        stream.write(
            b"commit refs/heads/main\n"
            b"author Bench <bench@example.com> %d +0000\n"
            b"committer Bench <bench@example.com> %d +0000\n"
            b"data %d\n%s" % (when, when, len(message), message)
        )
        for path in dict.fromkeys(added + changed):
            data = "".join(contents[path]).encode()
            stream.write(b"M 100644 inline %s\ndata %d\n%s\n" % (path.encode(), len(data), data))
        stream.write(b"\n")
    stream.write(b"done\n")


def generate_repo(params: RepoParams, target: Path) -> None:
    """Create the bare repository ``target/repo.git`` (via a temporary directory)."""
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    bare = temp / "repo.git"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    process = subprocess.Popen(
        ["git", "fast-import", "--quiet", "--done"],
        cwd=bare,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=git_env(),
        bufsize=1 << 20,
    )
    assert process.stdin is not None and process.stderr is not None
    with contextlib.suppress(BrokenPipeError):  # fast-import died: its stderr says why
        write_history(process.stdin, params)
    with contextlib.suppress(BrokenPipeError):
        process.stdin.close()
    error = process.stderr.read().decode(errors="replace").strip()
    if process.wait() != 0:
        raise BenchError(f"git fast-import failed: {error.splitlines()[-1:] or 'no message'}")
    git("repack", "-a", "-d", "-q", cwd=bare)
    git("prune-packed", cwd=bare)
    shutil.rmtree(target, ignore_errors=True)
    temp.rename(target)


def describe_repo(base: Path, params: RepoParams) -> RepoInfo:
    """Read back what the repository holds at HEAD (cached in ``info.json``)."""
    info_file = base / "info.json"
    if info_file.exists():
        return RepoInfo(base=base, **json.loads(info_file.read_text()))
    bare = base / "repo.git"
    tip = git("rev-parse", "HEAD", cwd=bare).strip()
    listed = git("ls-tree", "-z", "--name-only", "HEAD", cwd=bare).split("\0")
    files = directories = content = 0
    for record in git("ls-tree", "-r", "-t", "-l", "-z", "HEAD", cwd=bare).split("\0"):
        if not record:
            continue
        kind, size = record.split()[1], record.split()[3]
        if kind == "tree":
            directories += 1
        else:
            files += 1
            content += int(size)
    counts = dict(line.split(": ") for line in git("count-objects", "-v", cwd=bare).splitlines())
    info: dict[str, Any] = {
        "name": "repo.git",
        "tip": tip,
        "root_names": sorted(n for n in listed if n),
        "files": files,
        "directories": directories,
        "content_bytes": content,
        "pack_bytes": int(counts["size-pack"]) * 1024,
        "commits": int(git("rev-list", "--count", "HEAD", cwd=bare)),
    }
    if info["commits"] != params.commits or files != params.files:
        raise BenchError(f"generated repository does not match its parameters: {info_file}")
    info_file.write_text(json.dumps(info, indent=1) + "\n")
    return RepoInfo(base=base, **info)


def ensure_repo(params: RepoParams) -> tuple[RepoInfo, float | None]:
    """The cached repository for ``params``, generated first if missing; also the seconds
    generation took (None when it came from the cache)."""
    base = WORK / params.key
    took = None
    if not (base / "info.json").exists():
        say(f"generating {params.files} files in {params.commits} commits into {base} ...")
        started = time.perf_counter()
        generate_repo(params, base)
        took = time.perf_counter() - started
    info = describe_repo(base, params)
    if took is not None:
        say(f"generated in {took:.1f} s (pack {info.pack_bytes / 2**20:.1f} MiB)")
    for key, value in SERVE_CONFIG.items():
        git("config", key, value, cwd=info.path)
    return info, took


# -- the server ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def git_daemon(base: Path, log_file: Path) -> Iterator[int]:
    """Serve every repository under ``base`` with ``git daemon``; yield its port."""
    for _attempt in range(3):
        port = free_port()
        with open(log_file, "ab") as log:
            process = subprocess.Popen(
                [
                    "git",
                    "daemon",
                    "--export-all",
                    "--reuseaddr",
                    "--informative-errors",
                    "--listen=127.0.0.1",
                    f"--port={port}",
                    f"--base-path={base}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=git_env(),
            )
        try:
            deadline = time.monotonic() + 10
            while process.poll() is None and time.monotonic() < deadline:
                if accepts_connections(port):
                    break
                time.sleep(0.02)
            else:
                continue  # exited (port taken?) or never listened: try another port
            yield port
            return
        finally:
            stop_process(process)
    raise BenchError(f"git daemon did not start (see {log_file})")


# -- artifactfs mounts ---------------------------------------------------------------------


def stop_process(process: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps the process."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _mountinfo_escape(path: Path) -> bytes:
    """``path`` as /proc/self/mountinfo writes it (space, tab, newline, backslash in octal)."""
    return b"".join(
        b"\\%03o" % byte if byte in b" \t\n\\" else bytes([byte]) for byte in os.fsencode(path)
    )


class MountTable:
    """``/proc/self/mountinfo``, read on every change: the kernel wakes ``poll()`` with
    POLLPRI when the mount table changes, so no sleep adds to the measured time."""

    def __init__(self) -> None:
        self._file = open("/proc/self/mountinfo", "rb", buffering=0)  # noqa: SIM115
        self._poll = select.poll()
        self._poll.register(self._file, select.POLLPRI | select.POLLERR)

    def close(self) -> None:
        self._file.close()

    def fs_type_at(self, path: Path) -> str | None:
        """The file system type of the topmost mount at ``path``, or None."""
        self._file.seek(0)
        target = _mountinfo_escape(path)
        found = None
        for line in (self._file.read() or b"").splitlines():
            left, _, right = line.partition(b" - ")
            fields = left.split()
            if len(fields) >= 5 and fields[4] == target and right:
                found = right.split()[0].decode(errors="replace")
        return found

    def wait_change(self, timeout: float) -> None:
        self._poll.poll(max(0, int(timeout * 1000)))


SHM = Path("/dev/shm")
SHM_NEEDED = 1 << 30


def default_scratch() -> Path:
    """A tmpfs (``/dev/shm``, if it has 1 GiB free), else ``bench-work/``.

    Peer 2 creates thousands of files, and a disk file system makes it measure the disk: ext4
    slows file creation down for minutes after many deletions (its inode allocator skips
    recently deleted inodes), and every run deletes the clones of the run before.
    """
    with contextlib.suppress(OSError):
        free = os.statvfs(SHM)
        if filesystem_of(SHM) == "tmpfs" and free.f_bavail * free.f_frsize >= SHM_NEEDED:
            return SHM
    return WORK


def filesystem_of(path: Path) -> str:
    """The type of the file system ``path`` is on, from the mount table."""
    target = os.fsencode(path.resolve())
    found, longest = "unknown", -1
    with open("/proc/self/mountinfo", "rb") as table:
        for line in table:
            left, _, right = line.partition(b" - ")
            fields = left.split()
            if len(fields) < 5 or not right:
                continue
            point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), fields[4])
            inside = target == point or target.startswith(point.rstrip(b"/") + b"/")
            if inside and len(point) >= longest:
                found, longest = right.split()[0].decode(errors="replace"), len(point)
    return found


def is_mounted(path: Path) -> bool:
    table = MountTable()
    try:
        return table.fs_type_at(path) is not None
    finally:
        table.close()


def force_unmount(path: Path) -> None:
    """``fusermount3 -u``, then lazily (``-u -z``), while ``path`` is still a mount point."""
    for flags in (["-u"], ["-u", "-z"]):
        if not is_mounted(path):
            return
        subprocess.run(["fusermount3", *flags, "-q", str(path)], capture_output=True, check=False)


def listdir_within(path: Path, timeout: float) -> tuple[list[str], float]:
    """``os.listdir(path)`` in a thread (it blocks until the mount is ready); return the names
    and the ``perf_counter`` at which the call returned. Raise BenchError after ``timeout``."""
    outcome: dict[str, object] = {}

    def list_it() -> None:
        try:
            outcome["names"] = os.listdir(path)
        except OSError as exc:
            outcome["error"] = exc
        outcome["at"] = time.perf_counter()

    thread = threading.Thread(target=list_it, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise BenchError(f"listing {path} did not return within {timeout:.0f} s")
    if "error" in outcome:
        raise BenchError(f"listing {path} failed: {outcome['error']}")
    names = outcome["names"]
    at = outcome["at"]
    assert isinstance(names, list) and isinstance(at, float)
    return names, at


def mounts_under(path: Path) -> list[Path]:
    """Every mount point at or below ``path`` (an absolute path without symlinks), deepest
    first, so that unmounting them in this order never meets a busy parent."""
    prefix = os.fsencode(path).rstrip(b"/")
    found = []
    with open("/proc/self/mountinfo", "rb") as table:
        for line in table:
            fields = line.split()
            if len(fields) < 5:
                continue
            point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), fields[4])
            if point == prefix or point.startswith(prefix + b"/"):
                found.append(Path(os.fsdecode(point)))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def artifactfs_env(home: Path) -> dict[str, str]:
    """The environment of every measured artifactfs process: its own state home, and a
    bytecode cache that persists between runs (see ``PYCACHE``)."""
    env = {**os.environ, "ARTIFACTFS_HOME": str(home), "PYTHONPYCACHEPREFIX": str(PYCACHE)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


@dataclass
class MountTiming:
    mounted: float
    ready: float


def time_artifactfs(executable: Path, url: str, repo: RepoInfo, scratch: Path) -> MountTiming:
    """Mount ``url`` with a cold state home; seconds from spawn to mount point and to ready."""
    with mounted(executable, url, scratch) as mount:
        appeared = time.perf_counter()
        names, ready = listdir_within(mount.mountpoint, READY_TIMEOUT)
        if sorted(names) != repo.root_names:
            raise BenchError(f"artifactfs listed {sorted(names)[:8]}..., not the repository root")
    return MountTiming(appeared - mount.started, ready - mount.started)


@dataclass
class Mount:
    process: subprocess.Popen[bytes]
    mountpoint: Path
    started: float
    """``perf_counter`` at the spawn."""
    output: Path

    def peak_rss(self) -> int:
        """The mount process's peak resident set (``VmHWM``), in bytes."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        if found is None:
            raise BenchError(f"no VmHWM in /proc/{self.process.pid}/status")
        return int(found[1]) * 1024


@contextlib.contextmanager
def mounted(
    executable: Path,
    url: str,
    where: Path,
    home: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Mount]:
    """``artifactfs mount URL`` on ``where/mnt`` with state ``home`` (default: a new, empty
    ``where/home``) and ``env`` added to the environment, yielded once its mount point is in
    the mount table; unmounted and its process reaped however the block ends."""
    mountpoint, output = where / "mnt", where / "mount.out"
    if home is None:
        home = where / "home"
        home.mkdir(parents=True)
    mountpoint.mkdir()
    table = MountTable()
    process: subprocess.Popen[bytes] | None = None
    try:
        with open(output, "wb") as out:
            started = time.perf_counter()
            process = subprocess.Popen(
                [str(executable), "mount", url, str(mountpoint)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={**artifactfs_env(home), **(env or {})},
            )
        deadline = started + MOUNT_TIMEOUT
        while (fs_type := table.fs_type_at(mountpoint)) is None:
            if process.poll() is not None:
                raise BenchError(f"artifactfs exited with {process.returncode}: {tail(output)}")
            if time.perf_counter() > deadline:
                raise BenchError(f"artifactfs did not mount within {MOUNT_TIMEOUT:.0f} s")
            table.wait_change(min(0.1, deadline - time.perf_counter()))
        if fs_type != FUSE_TYPE:
            raise BenchError(f"{mountpoint} got a {fs_type} mount, not {FUSE_TYPE}")
        yield Mount(process, mountpoint, started, output)
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, check=False)
        code, _ = wait_exactly(process, 30)
        if code is None:
            raise BenchError("artifactfs did not exit within 30 s of its unmount")
        if code != 0:
            say(f"warning: artifactfs exited with {code} after unmount: {tail(output)}")
    finally:
        table.close()
        force_unmount(mountpoint)
        if process is not None:
            stop_process(process)
        force_unmount(mountpoint)


# -- the artifactfs daemon -----------------------------------------------------------------

DAEMON_START_TIMEOUT = 30.0
DAEMON_STOP_TIMEOUT = 30.0
"""The daemon gives its workers 20 s to stop on SIGTERM; this is longer."""
CLI_TIMEOUT = 60.0


class ArtifactDaemon:
    """``artifactfs daemon`` on a state home of its own, run by the benchmark.

    It runs in a session of its own, so a Ctrl-C at the terminal reaches only the benchmark,
    which then stops the daemon with one SIGTERM (a second signal during its shutdown would
    kill it before it unmounts). Its workers run in sessions of their own too, by design;
    ``clean_up`` finds any that are left by ``--control-socket`` and this home on their command
    line, kills them, and detaches every mount under the home.
    """

    def __init__(self, executable: Path, home: Path) -> None:
        self.executable = executable
        self.home = home
        self.env = artifactfs_env(home)
        self.output = home.with_name(f"{home.name}-daemon.out")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the daemon and return once ``artifactfs status`` answers."""
        self.home.mkdir(parents=True)
        with open(self.output, "ab") as out:
            self.process = subprocess.Popen(
                [str(self.executable), "daemon"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=self.env,
                start_new_session=True,
            )
        socket_path = self.home / "run" / "daemon.sock"
        deadline = time.monotonic() + DAEMON_START_TIMEOUT
        while not (socket_path.exists() and self.cli("status").returncode == 0):
            if self.process.poll() is not None:
                raise BenchError(
                    f"artifactfs daemon exited with {self.process.returncode}: {tail(self.output)}"
                )
            if time.monotonic() > deadline:
                raise BenchError(
                    f"artifactfs daemon did not answer within {DAEMON_START_TIMEOUT:.0f} s"
                )
            time.sleep(0.02)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``artifactfs ARGS`` against this daemon (not timed)."""
        try:
            return subprocess.run(
                [str(self.executable), *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=self.env,
                timeout=CLI_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"artifactfs {args[0]} took over {CLI_TIMEOUT:.0f} s") from None

    def remove_repo(self, name: str) -> None:
        """``artifactfs remove-repo NAME``; its mount must be gone when the command returns."""
        result = self.cli("remove-repo", name)
        if result.returncode != 0:
            raise BenchError(f"artifactfs remove-repo {name} failed: {result.stderr.strip()}")
        if is_mounted(self.mountpoint(name)):
            raise BenchError(f"{self.mountpoint(name)} is still mounted after remove-repo")

    def mountpoint(self, name: str) -> Path:
        return self.home / "mnt" / name

    def stop(self) -> None:
        """SIGTERM (the daemon unmounts everything), then wait; SIGKILL if it will not go."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            code = process.wait(DAEMON_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            say(f"warning: artifactfs daemon did not stop within {DAEMON_STOP_TIMEOUT:.0f} s")
            process.kill()
            process.wait()
            return
        if code != 0:
            say(f"warning: artifactfs daemon exited with {code}: {tail(self.output)}")

    def worker_pids(self) -> list[int]:
        """Mount workers of this home that are still running."""
        home = os.fsencode(self.home)
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes()  # a spare's title: no NULs
            except OSError:
                continue
            if b"--control-socket" in command and home in command:
                pids.append(int(entry.name))
        return pids

    def clean_up(self) -> None:
        """Kill leftover workers and detach every mount under the home."""
        leftovers = self.worker_pids()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if leftovers:
            say(f"warning: killed {len(leftovers)} artifactfs worker(s) left running")
        deadline = time.monotonic() + 5
        while self.worker_pids() and time.monotonic() < deadline:
            time.sleep(0.02)  # not our children: wait for them to be gone
        for mountpoint in mounts_under(self.home):
            say(f"warning: detaching {mountpoint}, left mounted")
            subprocess.run(
                ["fusermount3", "-u", "-z", "-q", str(mountpoint)], capture_output=True, check=False
            )


@contextlib.contextmanager
def artifactfs_daemon(executable: Path, home: Path) -> Iterator[ArtifactDaemon]:
    """A running daemon on ``home``; stopped, and anything it leaves cleaned up, however the
    block ends (an error, Ctrl-C, SIGTERM)."""
    daemon = ArtifactDaemon(executable, home)
    try:
        daemon.start()
        yield daemon
    finally:
        try:
            daemon.stop()
        finally:
            daemon.clean_up()


@dataclass
class AddTiming:
    returned: float
    ready: float


def wait_exactly(process: subprocess.Popen[bytes], timeout: float) -> tuple[int | None, float]:
    """Wait for ``process`` in a blocking ``waitpid``; return its exit status (None if it ran
    over ``timeout`` and was killed) and the ``perf_counter`` at which the wait returned.

    ``Popen.wait(timeout)`` polls, sleeping up to 50 ms between checks, which would round the
    measured times up to a 50 ms grid; a timer thread kills the process instead."""
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        process.kill()

    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        code = process.wait()
        at = time.perf_counter()
    finally:
        watchdog.cancel()
    return (None if expired.is_set() else code), at


def time_add_repo(daemon: ArtifactDaemon, name: str, url: str, repo: RepoInfo) -> AddTiming:
    """``artifactfs add-repo NAME URL --async``: seconds from spawning it to its exit, and to
    ``os.listdir`` of the mount (issued as it exits) returning the root. Then remove-repo."""
    mountpoint = daemon.mountpoint(name)
    output = daemon.home.with_name(f"add-{name}.out")
    table = MountTable()
    process: subprocess.Popen[bytes] | None = None
    try:
        with open(output, "wb") as out:
            started = time.perf_counter()
            process = subprocess.Popen(
                [str(daemon.executable), "add-repo", name, url, "--async"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=daemon.env,
            )
        code, returned = wait_exactly(process, CLI_TIMEOUT)
        if code is None:
            raise BenchError(f"artifactfs add-repo took over {CLI_TIMEOUT:.0f} s")
        fs_type = table.fs_type_at(mountpoint)
        if code != 0:
            raise BenchError(f"artifactfs add-repo exited with {code}: {tail(output)}")
        if fs_type != FUSE_TYPE:
            got = f"a {fs_type} mount" if fs_type else "no mount"
            raise BenchError(f"add-repo --async returned with {got} at {mountpoint}")
        names, ready = listdir_within(mountpoint, READY_TIMEOUT)
    finally:
        table.close()
        if process is not None:
            stop_process(process)  # already reaped unless interrupted
    if sorted(names) != repo.root_names:
        raise BenchError(f"{name} listed {sorted(names)[:8]}..., not the repository root")
    daemon.remove_repo(name)
    return AddTiming(returned - started, ready - started)


# -- git clone peers -----------------------------------------------------------------------


def time_clone(url: str, target: Path, extra: Sequence[str]) -> float:
    """Seconds ``git clone -q <extra> url target`` takes."""
    command = ["git", "clone", "-q", *extra, url, str(target)]
    started = time.perf_counter()
    try:
        result = subprocess.run(
            command, capture_output=True, env=git_env(), timeout=CLONE_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(command[:-2])} took over {CLONE_TIMEOUT:.0f} s") from None
    took = time.perf_counter() - started
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise BenchError(f"{' '.join(command[:-2])} failed: {message or 'no message'}")
    return took


def check_clone(target: Path, repo: RepoInfo, checkout: bool) -> None:
    """The clone is of the right commit (and, checked out, shows the right root)."""
    head = git("rev-parse", "HEAD", cwd=target).strip()
    if head != repo.tip:
        raise BenchError(f"clone at {target} is at {head}, not {repo.tip}")
    if checkout and sorted(n for n in os.listdir(target) if n != ".git") != repo.root_names:
        raise BenchError(f"clone at {target} does not show the repository root")


# -- measuring -----------------------------------------------------------------------------

PEER1_ARGS = ("--depth", "1", "--filter=blob:none", "--no-checkout")
PEER2_ARGS = ("--depth", "1")


@dataclass
class Samples:
    mounted: list[float] = field(default_factory=list)
    artifactfs: list[float] = field(default_factory=list)
    peer1: list[float] = field(default_factory=list)
    peer2: list[float] = field(default_factory=list)
    warm_returned: list[float] = field(default_factory=list)
    warm_ready: list[float] = field(default_factory=list)
    cold_returned: list[float] = field(default_factory=list)
    cold_ready: list[float] = field(default_factory=list)


def measure(
    executable: Path,
    url: str,
    repo: RepoInfo,
    runs: int,
    warmup: int,
    scratch: Path,
    shared: ArtifactDaemon,
) -> Samples:
    """``warmup`` unrecorded rounds, then ``runs`` rounds of the five measurements, each round
    in a rotated order so that none always goes first. ``shared`` is the daemon that every
    round's warm ``add-repo`` goes to."""
    samples = Samples()

    def artifactfs(where: Path, record: bool) -> str:
        timing = time_artifactfs(executable, url, repo, where)
        if record:
            samples.mounted.append(timing.mounted)
            samples.artifactfs.append(timing.ready)
        return f"artifactfs {ms(timing.ready)} ms (mounted at {ms(timing.mounted)} ms)"

    def peer1(where: Path, record: bool) -> str:
        took = time_clone(url, where / "clone", PEER1_ARGS)
        check_clone(where / "clone", repo, checkout=False)
        if record:
            samples.peer1.append(took)
        return f"peer 1 {ms(took)} ms"

    def peer2(where: Path, record: bool) -> str:
        took = time_clone(url, where / "clone", PEER2_ARGS)
        check_clone(where / "clone", repo, checkout=True)
        if record:
            samples.peer2.append(took)
        return f"peer 2 {ms(took)} ms"

    def daemon_note(label: str, timing: AddTiming) -> str:
        return f"{label} {ms(timing.ready)} ms (returned at {ms(timing.returned)} ms)"

    def daemon_warm(where: Path, record: bool) -> str:
        timing = time_add_repo(shared, f"bench-{where.name}", url, repo)
        if record:
            samples.warm_returned.append(timing.returned)
            samples.warm_ready.append(timing.ready)
        return daemon_note("daemon warm", timing)

    def daemon_cold(where: Path, record: bool) -> str:
        with artifactfs_daemon(executable, where / "home") as daemon:
            timing = time_add_repo(daemon, "bench", url, repo)
        if record:
            samples.cold_returned.append(timing.returned)
            samples.cold_ready.append(timing.ready)
        return daemon_note("daemon cold", timing)

    steps: list[tuple[str, Callable[[Path, bool], str]]] = [
        ("artifactfs", artifactfs),
        ("peer1", peer1),
        ("peer2", peer2),
        ("daemon-warm", daemon_warm),
        ("daemon-cold", daemon_cold),
    ]
    for round_number in range(warmup + runs):
        record = round_number >= warmup
        shift = round_number % len(steps)
        notes = []
        for name, step in steps[shift:] + steps[:shift]:
            where = scratch / f"round{round_number}-{name}"
            where.mkdir(parents=True)
            notes.append(step(where, record))
            remove_tree(where)
        label = f"run {round_number - warmup + 1}/{runs}" if record else "warm-up"
        say(f"{label}: {', '.join(notes)}")
    return samples


def remove_tree(path: Path) -> None:
    """Delete ``path`` unless something is still mounted inside it."""
    if mounts_under(path):
        say(f"warning: leaving {path}: still mounted")
        return
    shutil.rmtree(path, ignore_errors=True)


# -- reporting -----------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def first_line(command: Sequence[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError:
        return "unknown"
    return (result.stdout.strip().splitlines() or ["unknown"])[0]


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    cpu = "unknown"
    with contextlib.suppress(OSError):
        models = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = models[0] if models else cpu
    revision = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    status = ["git", "-C", str(ROOT), "status", "--porcelain", "--", "artifactfs"]
    changed = first_line(status) != "unknown"  # any output: the package differs from HEAD
    return {
        "Date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": f"{first_line(['nproc'])} cores ({cpu})",
        "Memory": memory,
        "Kernel": platform.release(),
        "git": first_line(["git", "--version"]).removeprefix("git version "),
        "Python": platform.python_version(),
        "artifactfs": revision + (" with uncommitted changes" if changed else ""),
    }


@dataclass(frozen=True)
class Setup:
    """How a benchmark run was made, for the report."""

    runs: int
    warmup: int
    scratch: Path
    took: float
    """Seconds the whole benchmark took."""
    generated: float | None
    """Seconds generating the repository took; None when it came from the cache."""


ADD = "`add-repo --async`"


def results_markdown(samples: Samples, repo: RepoInfo, setup: Setup) -> str:
    """The results section: machine, repository, the table of medians and the ratios."""
    rows = [
        ("artifactfs: spawn → root listing returned (ready)", samples.artifactfs),
        ("artifactfs: spawn → mount point in the mount table", samples.mounted),
        ("peer 1: `git clone --depth 1 --filter=blob:none --no-checkout`", samples.peer1),
        ("peer 2: `git clone --depth 1`", samples.peer2),
        (f"daemon, warm: spawn {ADD} → root listing returned (ready)", samples.warm_ready),
        (f"daemon, warm: spawn {ADD} → command exited (mounted)", samples.warm_returned),
        (f"daemon, cold: spawn {ADD} → root listing returned (ready)", samples.cold_ready),
        (f"daemon, cold: spawn {ADD} → command exited (mounted)", samples.cold_returned),
    ]
    added = [
        ("daemon, warm", statistics.median(samples.warm_returned)),
        ("daemon, cold", statistics.median(samples.cold_returned)),
    ]
    ready = statistics.median(samples.artifactfs)
    ratios = [
        ("artifactfs / peer 1", ready / statistics.median(samples.peer1), GOAL_PEER1),
        ("artifactfs / peer 2", ready / statistics.median(samples.peer2), GOAL_PEER2),
    ]
    generated = setup.generated
    source = "generated by this run" if generated is not None else "reused from bench-work/"
    where = setup.scratch.relative_to(ROOT) if setup.scratch.is_relative_to(ROOT) else setup.scratch
    lines = ["Machine:", ""]
    lines += [f"- {key}: {value}" for key, value in machine().items()]
    lines += [
        "",
        f"Repository ({source}): {repo.files:,} files in {repo.directories:,} directories, "
        f"{repo.content_bytes / 2**20:.1f} MiB of content at HEAD, {repo.commits:,} commits, "
        f"{repo.pack_bytes / 2**20:.1f} MiB packed; served by `git daemon` on 127.0.0.1.",
        "",
        f"State homes, mount points and clones in `{where}/` ({filesystem_of(setup.scratch)}).",
        "",
        f"{setup.runs} runs after {setup.warmup} warm-up round{'s' if setup.warmup != 1 else ''}; "
        f"the whole benchmark took {setup.took:.0f} s"
        + (f" (generating the repository: {generated:.1f} s)." if generated is not None else "."),
        "",
        "| Measurement | Median (ms) | Min (ms) | Max (ms) |",
        "|---|---:|---:|---:|",
    ]
    for label, values in rows:
        lines.append(
            f"| {label} | {ms(statistics.median(values))} | {ms(min(values))} | {ms(max(values))} |"
        )
    lines += ["", "| Ratio of medians | Value | Goal | Met |", "|---|---:|---:|:---:|"]
    for label, value, goal in ratios:
        met = "yes" if value <= goal else "**no**"
        lines.append(f"| {label} | {value:.2f}{TIMES} | ≤ {goal}{TIMES} | {met} |")
    lines += ["", f"| {ADD} returned, median | Value (ms) | Goal (ms) | Met |"]
    lines.append("|---|---:|---:|:---:|")
    for goal in GOALS_ADD:
        for label, value in added:
            met = "yes" if value <= goal else "**no**"
            lines.append(f"| {label} | {ms(value)} | ≤ {ms(goal)} | {met} |")
    return "\n".join(lines) + "\n"


_DOC_HEADER = "# Benchmarks\n\nRun `scripts/bench`; it rewrites the section below.\n\n"


def write_doc(results: str, start: str = RESULTS_START, end: str = RESULTS_END) -> None:
    """Replace the results section between the markers ``start`` and ``end`` of
    docs/benchmarks.md (appending it, or creating the file, if needed)."""
    section = f"{start}\n{results}{end}\n"
    text = DOC.read_text() if DOC.exists() else _DOC_HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _match: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.parent.mkdir(parents=True, exist_ok=True)
    temp = DOC.with_name(f".{DOC.name}.tmp")
    temp.write_text(text)
    temp.rename(DOC)


# -- entry point ---------------------------------------------------------------------------


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench git",
        description="Time a cold artifactfs mount of a generated git repository until its root "
        "lists, against git clone --depth 1 with and without --filter=blob:none, and "
        "artifactfs add-repo --async through a running daemon (warm and cold home).",
    )
    parser.add_argument("--runs", type=positive, default=5, help="measured runs (default 5)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        choices=range(0, 11),
        metavar="N",
        help="unrecorded warm-up rounds first (default 1)",
    )
    parser.add_argument("--files", type=positive, default=5000, help="files at HEAD (default 5000)")
    parser.add_argument(
        "--commits", type=positive, default=5000, help="commits of history (default 5000)"
    )
    parser.add_argument(
        "--scratch",
        metavar="DIR",
        help="where the state homes, mount points and clones go (default: /dev/shm if it is "
        "a tmpfs with 1 GiB free, else bench-work/)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the results; leave docs/benchmarks.md"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """Generate or reuse the repository, serve it, measure, report."""
    started = time.perf_counter()
    executable = require_tools()
    base = Path(args.scratch).resolve() if args.scratch else default_scratch().resolve()
    if not base.is_dir():
        raise BenchError(f"--scratch {args.scratch}: not a directory")
    WORK.mkdir(exist_ok=True)
    repo, generated = ensure_repo(RepoParams(args.files, args.commits))
    scratch = base / f"bench-runs-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        with (
            git_daemon(repo.base, WORK / "git-daemon.log") as port,
            artifactfs_daemon(executable, scratch / "daemon-warm" / "home") as shared,
        ):
            url = f"git://127.0.0.1:{port}/{repo.name}"
            say(f"serving {repo.path} at {url}; artifactfs daemon on {shared.home}")
            samples = measure(executable, url, repo, args.runs, args.warmup, scratch, shared)
    finally:
        remove_tree(scratch)
    setup = Setup(args.runs, args.warmup, base, time.perf_counter() - started, generated)
    results = results_markdown(samples, repo, setup)
    print(results)
    if not args.no_write:
        write_doc(results)
        say(f"wrote the results into {DOC.relative_to(ROOT)}")
    return 0


def run_reporting(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a benchmark: a BenchError is one line and status 1, SIGTERM and ^C end it cleanly
    (its ``finally`` blocks unmount and stop what it started)."""
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    try:
        return run(args)
    except BenchError as exc:
        say(str(exc))
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    return run_reporting(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
