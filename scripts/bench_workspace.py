"""Benchmark: working in a writable git mount (issue 13) against a ``git clone --depth 1``
checkout, measured in the same run.

Two repositories, each served by a real ``git daemon`` on 127.0.0.1: the generated 5,000-file
repository of ``bench_git_mount.py`` (same generator and cache), and a real project, Django
5.1.4's source distribution committed as one commit (downloaded once from PyPI into
bench-work/; over 5,000 files). For each, every round runs, in a rotating order:

- **status** — artifactfs: mount on a cold home, wait until the root lists (ready), then time
  ``git status --porcelain`` three times: the first after mount, a second (clean, warm), and
  one after appending a line to 10 tracked files. Peer: ``git clone --depth 1`` (untimed),
  its index refreshed once the clock has left the clone's second (untimed: no racily clean
  entries, the checkout at its fastest), then the same three ``git status`` runs in it. Both
  must report exactly the 10 edited paths.
- **agent loop** — timed from the spawn of ``artifactfs mount`` (or of ``git clone --depth
  1``) to the end of: ``git status``, edit 3 files, ``git diff``, ``git commit -am``,
  ``grep -r WORD .`` (``--exclude-dir=.git``). The diffs must have the same length.

And once per round, on a one-file repository holding 100 MiB of random bytes:

- **write** — a new 100 MiB file written in 1 MiB ``write`` calls and ``fsync``'d, in the mount
  against the same in a directory beside the state home (the same file system), and through
  the minimal pyfuse3 file system of ``benchlib/minimal_fuse.py`` (writes in a thread, and on
  its loop): the limit any file system written with pyfuse3 reaches;
- **copy-up** — the 100 MiB file, already in the store (read once, untimed), opened for
  appending (the copy-up) with one byte appended and ``fsync``'d, against ``cp`` of a copy of
  the CAS file beside the home plus the same append.

Results go into docs/benchmarks.md (between the ``bench-workspace`` markers) unless
``--no-write``. Run it with ``scripts/bench workspace``. Every mount is unmounted and every
process stopped however the benchmark ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .benchlib.cli import BenchError, positive, require_tools, run_reporting, say
from .benchlib.minimal_fuse import minimal_mount
from .benchlib.mounts import default_scratch, listdir_within, mounted, remove_tree
from .benchlib.origins import git_daemon
from .benchlib.paths import WORK
from .benchlib.report import TIMES, load_average, machine_lines, met, write_doc
from .benchlib.repos import RepoParams, ensure_repo, git, git_env
from .benchlib.rounds import rotating_rounds

RESULTS_START = "<!-- bench-workspace:start -->"
RESULTS_END = "<!-- bench-workspace:end -->"
READY_TIMEOUT = 300.0
MiB = 1 << 20
BIG_SIZE = 100 * MiB
DJANGO = "Django-5.1.4"
DJANGO_WORK = WORK / "django-5.1.4"
EDITED = 10
AGENT_EDITS = 3


@dataclass(frozen=True)
class Origin:
    label: str
    url: str
    paths: list[str]
    """Tracked text files, in a fixed order: the ones edited are taken from its start."""
    word: str
    """What the agent loop greps for."""


@dataclass
class StatusSamples:
    first: list[float] = field(default_factory=list)
    clean: list[float] = field(default_factory=list)
    changed: list[float] = field(default_factory=list)


@dataclass
class Samples:
    status: dict[tuple[str, str], StatusSamples] = field(default_factory=dict)
    """(repository, who) -> git status times"""
    loop: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    write: dict[str, list[float]] = field(default_factory=dict)
    """who -> seconds to write and fsync 100 MiB"""
    copy_up: dict[str, list[float]] = field(default_factory=dict)


# -- repositories ----------------------------------------------------------------------------


def ensure_django() -> Path:
    """A bare repository holding Django's source distribution as one commit (made once)."""
    bare = DJANGO_WORK / "django.git"
    if (bare / "refs" / "heads" / "main").exists() or (bare / "packed-refs").exists():
        return DJANGO_WORK
    say(f"making a repository of {DJANGO}'s sources (once; pip download from PyPI)")
    shutil.rmtree(DJANGO_WORK, ignore_errors=True)
    DJANGO_WORK.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
         "--disable-pip-version-check", "-d", str(DJANGO_WORK), "django==5.1.4"],
        check=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    tree = DJANGO_WORK / "tree"
    (sdist,) = DJANGO_WORK.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(tree, filter="data")
    (work,) = list(tree.iterdir())  # the archive's one top directory
    git("init", "-q", "-b", "main", str(work))
    git("add", "-A", "-f", cwd=work)  # everything the archive holds, ignore files or not
    git("-c", "user.name=Bench", "-c", "user.email=bench@example.com",
        "commit", "-q", "-m", DJANGO, cwd=work)  # fmt: skip
    git("clone", "-q", "--bare", str(work), str(bare))
    for key, value in (("uploadpack.allowFilter", "true"),
                       ("uploadpack.allowAnySHA1InWant", "true"),
                       ("transfer.advertiseObjectInfo", "true")):  # fmt: skip
        git("config", key, value, cwd=bare)
    shutil.rmtree(tree)
    return DJANGO_WORK


def ensure_big() -> Path:
    """A bare repository whose one commit holds 100 MiB of random bytes as ``big.bin``."""
    base = WORK / "workspace-big"
    bare = base / "big.git"
    if (base / "done").exists():
        return base
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    data = base / "big.bin"
    rng = random.Random(13)
    with open(data, "wb") as out:
        for _ in range(BIG_SIZE // MiB):
            out.write(rng.randbytes(MiB))
    git("init", "-q", "--bare", "-b", "main", str(bare))
    git("config", "core.compression", "0", cwd=bare)
    oid = git("hash-object", "-w", str(data), cwd=bare).strip()
    tree = git("mktree", input=f"100644 blob {oid}\tbig.bin\n", cwd=bare).strip()
    commit = git("-c", "user.name=b", "-c", "user.email=b@example.com",
                 "commit-tree", tree, "-m", "big", cwd=bare).strip()  # fmt: skip
    git("update-ref", "refs/heads/main", commit, cwd=bare)
    git("config", "uploadpack.allowFilter", "true", cwd=bare)
    git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=bare)
    data.unlink()
    (base / "done").write_text(oid + "\n")
    return base


def text_paths(bare: Path) -> list[str]:
    """Tracked files under 64 KiB that look like text, in a fixed pseudo-random order."""
    listing = git("ls-tree", "-r", "-l", "HEAD", cwd=bare).splitlines()
    paths = []
    for line in listing:
        meta, path = line.split("\t", 1)
        mode, kind, _oid, size = meta.split()
        text = path.endswith((".py", ".txt", ".md", ".c", ".h", ".js", ".html", ".rst"))
        if mode == "100644" and kind == "blob" and 0 < int(size) < 65536 and text:
            paths.append(path)
    random.Random(5).shuffle(paths)
    return paths


# -- what is timed ---------------------------------------------------------------------------


def timed(command: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        list(command), cwd=cwd, env=env or git_env(), stdin=subprocess.DEVNULL,
        capture_output=True, check=False,
    )  # fmt: skip
    took = time.perf_counter() - started
    if result.returncode not in (0, 1) or (result.returncode == 1 and command[0] != "grep"):
        raise BenchError(f"{' '.join(command)} in {cwd}: {result.stderr.decode()[-300:]}")
    return took


def status_lines(tree: Path) -> list[str]:
    out = subprocess.run(
        ["git", "status", "--porcelain"], cwd=tree, env=git_env(), capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    return sorted(out.stdout.splitlines())


def edit(tree: Path, paths: Sequence[str]) -> None:
    for path in paths:
        with open(tree / path, "a") as out:
            out.write("# edited by the benchmark\n")


def settle_index(checkout: Path) -> None:
    """Put a fresh checkout in its steady state, untimed: files written in the same second as
    the index are "racily clean", and git hashes every one of them again at each status until
    the index is rewritten later (50 to 100 ms more per status on Django, or none, depending on
    where the clone fell in its second). Once the clock has moved past the index's second, one
    refresh rewrites it, and the checkout is timed at its best."""
    index = checkout / ".git" / "index"
    deadline = time.monotonic() + 5
    while time.time() < index.stat().st_mtime + 1.05 and time.monotonic() < deadline:
        time.sleep(0.05)
    subprocess.run(["git", "update-index", "-q", "--really-refresh"], cwd=checkout,
                   env=git_env(), check=False, capture_output=True)  # fmt: skip


def status_round(tree: Path, origin: Origin, samples: StatusSamples) -> None:
    status = ["git", "status", "--porcelain"]
    samples.first.append(timed(status, tree))
    samples.clean.append(timed(status, tree))
    if status_lines(tree):
        raise BenchError(f"git status in {tree} is not clean: {status_lines(tree)[:5]}")
    edited = origin.paths[:EDITED]
    edit(tree, edited)
    samples.changed.append(timed(status, tree))
    expected = sorted(f" M {path}" for path in edited)
    if status_lines(tree) != expected:
        raise BenchError(f"git status in {tree} says {status_lines(tree)[:12]}, not {expected}")


def agent_steps(tree: Path, origin: Origin) -> int:
    """The loop after the tree exists; the length of the diff it saw."""
    subprocess.run(["git", "status", "--porcelain"], cwd=tree, env=git_env(), check=True,
                   capture_output=True)  # fmt: skip
    edit(tree, origin.paths[:AGENT_EDITS])
    diff = subprocess.run(["git", "diff"], cwd=tree, env=git_env(), check=True,
                          capture_output=True).stdout  # fmt: skip
    subprocess.run(
        ["git", "-c", "user.name=Agent", "-c", "user.email=agent@example.com",
         "commit", "-q", "-am", "agent edit"],
        cwd=tree, env=git_env(), check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(["grep", "-r", "-q", "--exclude-dir=.git", "-F", "-e", origin.word, "."],
                   cwd=tree, check=False, capture_output=True)  # fmt: skip
    return len(diff)


@contextlib.contextmanager
def ready_mount(executable: Path, url: str, where: Path) -> Iterator[Path]:
    with mounted(executable, url, where) as mount:
        listdir_within(mount.mountpoint, READY_TIMEOUT)
        yield mount.mountpoint


def clone_depth_one(url: str, target: Path) -> None:
    subprocess.run(["git", "clone", "-q", "--depth", "1", url, str(target)], env=git_env(),
                   check=True, stdin=subprocess.DEVNULL, capture_output=True)  # fmt: skip


WRITE_LIMITS = {
    "thread": "minimal pyfuse3, each write in a worker thread (as artifactfs: the loop never"
    " waits on a disk)",
    "inline": "minimal pyfuse3, each write on the loop (no Python file system writes faster)",
}


def write_file(path: Path) -> float:
    block = random.Random(7).randbytes(MiB)
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(BIG_SIZE // MiB):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - started


def append_one_byte(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def measure_writes(executable: Path, big_url: str, where: Path, samples: Samples) -> None:
    disk = where / "disk"
    disk.mkdir()
    with ready_mount(executable, big_url, where / "a") as mnt:
        big = mnt / "big.bin"
        with open(big, "rb") as source:  # into the store, untimed
            while source.read(MiB):
                pass
        started = time.perf_counter()
        append_one_byte(big)
        samples.copy_up.setdefault("artifactfs", []).append(time.perf_counter() - started)
        samples.write.setdefault("artifactfs", []).append(write_file(mnt / "new.bin"))
        stored = disk / "stored.bin"
        with open(big, "rb") as source, open(stored, "wb") as out:
            shutil.copyfileobj(source, out, MiB)
    started = time.perf_counter()
    shutil.copyfile(stored, disk / "copied.bin")
    append_one_byte(disk / "copied.bin")
    samples.copy_up.setdefault("disk", []).append(time.perf_counter() - started)
    samples.write.setdefault("disk", []).append(write_file(disk / "new.bin"))
    for writes in WRITE_LIMITS:  # what any pyfuse3 file system reaches: the limit
        backing = disk / f"minimal-{writes}.bin"
        backing.touch()
        with minimal_mount(backing, where / f"minimal-{writes}", writes) as file:
            samples.write.setdefault(f"pyfuse3-{writes}", []).append(write_file(file))


def measure(
    executable: Path, origins: list[Origin], big_url: str, runs: int, scratch: Path
) -> Samples:
    samples = Samples()
    jobs: list[tuple[str, Callable[[Path], None]]] = []
    for origin in origins:
        for who in ("artifactfs", "clone"):
            status_job = _status_job(executable, origin, who, samples)
            loop_job = _loop_job(executable, origin, who, samples)
            jobs += [(f"status {origin.label} {who}", status_job),
                     (f"loop {origin.label} {who}", loop_job)]  # fmt: skip
    jobs.append(("writes", lambda where: measure_writes(executable, big_url, where, samples)))
    for round_ in rotating_rounds(jobs, runs, 0):
        for name, job in round_.jobs:
            where = scratch / f"r{round_.number}-{name.replace(' ', '-')}"
            where.mkdir()
            try:
                say(f"round {round_.number}: {name}")
                job(where)
            finally:
                remove_tree(where)
    return samples


def _status_job(
    executable: Path, origin: Origin, who: str, samples: Samples
) -> Callable[[Path], None]:
    def run(where: Path) -> None:
        into = samples.status.setdefault((origin.label, who), StatusSamples())
        if who == "artifactfs":
            with ready_mount(executable, origin.url, where) as mnt:
                status_round(mnt, origin, into)
        else:
            clone_depth_one(origin.url, where / "clone")
            settle_index(where / "clone")
            status_round(where / "clone", origin, into)

    return run


def _loop_job(
    executable: Path, origin: Origin, who: str, samples: Samples
) -> Callable[[Path], None]:
    def run(where: Path) -> None:
        started = time.perf_counter()
        if who == "artifactfs":
            with ready_mount(executable, origin.url, where) as mnt:
                agent_steps(mnt, origin)
                took = time.perf_counter() - started
        else:
            clone_depth_one(origin.url, where / "clone")
            agent_steps(where / "clone", origin)
            took = time.perf_counter() - started
        samples.loop.setdefault((origin.label, who), []).append(took)

    return run


# -- the report ------------------------------------------------------------------------------


def ms(values: Sequence[float]) -> str:
    return f"{statistics.median(values) * 1000:,.0f} ms"


def ratio(ours: Sequence[float], theirs: Sequence[float]) -> float:
    return statistics.median(ours) / statistics.median(theirs)


def markdown(samples: Samples, origins: list[Origin], runs: int, seconds: float) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')}, {runs} round(s), medians; "
        f"{seconds:.0f} s in all. " + " ".join(machine_lines()),
        "",
        "| repository | what | artifactfs | `git clone --depth 1` | ratio | goal | met |",
        "|---|---|---:|---:|---:|---|:---:|",
    ]
    for origin in origins:
        ours = samples.status[(origin.label, "artifactfs")]
        theirs = samples.status[(origin.label, "clone")]
        for label, mine, peer in (
            ("`git status`, first", ours.first, theirs.first),
            ("`git status`, clean", ours.clean, theirs.clean),
            (f"`git status`, {EDITED} changed", ours.changed, theirs.changed),
        ):
            value = ratio(mine, peer)
            lines.append(
                f"| {origin.label} | {label} | {ms(mine)} | {ms(peer)} | {value:.2f}{TIMES}"
                f" | ≤ 1.0{TIMES} | {met(value <= 1.0)} |"
            )
        mine = samples.loop[(origin.label, "artifactfs")]
        peer = samples.loop[(origin.label, "clone")]
        value = ratio(mine, peer)
        lines.append(
            f"| {origin.label} | agent loop (mount or clone → status → edit 3 → diff → commit"
            f" → grep -r) | {ms(mine)} | {ms(peer)} | {value:.2f}{TIMES} | ≤ 0.5{TIMES}"
            f" | {met(value <= 0.5)} |"
        )
    lines += ["", "| 100 MiB | artifactfs | the home's disk | ratio (throughput) | goal | met |",
              "|---|---:|---:|---:|---|:---:|"]  # fmt: skip
    for label, key in (("write + fsync", "write"), ("copy-up + append + fsync", "copy_up")):
        values: dict[str, list[float]] = getattr(samples, key)
        mine, disk = values["artifactfs"], values["disk"]
        throughput = statistics.median(disk) / statistics.median(mine)
        lines.append(
            f"| {label} | {mib_per_second(mine)} | {mib_per_second(disk)}"
            f" | {throughput:.2f}{TIMES} | ≥ 0.8{TIMES} | {met(throughput >= 0.8)} |"
        )
    lines += ["", "The limit for writes through pyfuse3, measured in the same rounds: a minimal "
              "pyfuse3 file system (`scripts/benchlib/minimal_fuse.py`) whose writes are "
              "`os.pwrite`s of a file beside the home, nothing else.", "",
              "| 100 MiB write + fsync | throughput | of the home's disk | artifactfs of it |",
              "|---|---:|---:|---:|"]  # fmt: skip
    disk = samples.write["disk"]
    for writes, label in WRITE_LIMITS.items():
        limit = samples.write[f"pyfuse3-{writes}"]
        lines.append(
            f"| {label} | {mib_per_second(limit)}"
            f" | {statistics.median(disk) / statistics.median(limit):.2f}{TIMES}"
            f" | {statistics.median(limit) / statistics.median(samples.write['artifactfs']):.2f}"
            f"{TIMES} |"
        )
    return "\n".join(lines) + "\n"


def mib_per_second(seconds: Sequence[float]) -> str:
    return f"{BIG_SIZE / MiB / statistics.median(seconds):,.0f} MiB/s"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench workspace", description=__doc__)
    parser.add_argument("--runs", type=positive, default=3, help="rounds (3)")
    parser.add_argument("--scratch", metavar="DIR", help="where homes, mounts and clones go")
    parser.add_argument("--no-django", action="store_true", help="only the generated repository")
    parser.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    load_before = load_average()
    executable = require_tools()
    base = Path(args.scratch).resolve() if args.scratch else default_scratch().resolve()
    WORK.mkdir(exist_ok=True)
    generated, _ = ensure_repo(RepoParams(5000, 5000))
    bases = [("generated 5,000 files", generated.base, generated.name)]
    if not args.no_django:
        bases.append((f"{DJANGO} sources", ensure_django(), "django.git"))
    big = ensure_big()
    scratch = base / f"bench-workspace-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        with contextlib.ExitStack() as stack:
            origins = []
            for index, (label, served, name) in enumerate(bases):
                daemon = stack.enter_context(git_daemon(served, scratch / f"daemon-{index}.log"))
                paths = text_paths(served / name)
                if len(paths) < 2 * EDITED:
                    raise BenchError(f"{label}: too few text files to edit")
                origins.append(Origin(label, daemon.url(name), paths, "import"))
            big_daemon = stack.enter_context(git_daemon(big, scratch / "daemon-big.log"))
            samples = measure(executable, origins, big_daemon.url("big.git"), args.runs, scratch)
    finally:
        remove_tree(scratch)
    report = markdown(samples, origins, args.runs, time.perf_counter() - started)
    report += f"\nLoad average before and after: {load_before}; {load_average()}.\n"
    print(report)
    if not args.no_write:
        write_doc(report, RESULTS_START, RESULTS_END)
        say("wrote the results into docs/benchmarks.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_reporting(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
