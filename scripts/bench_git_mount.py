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
results section of ``docs/benchmarks.md`` (unless ``--no-write``). Run it with ``scripts/bench``
(or ``python -m scripts.bench_git_mount`` from the root).
Every daemon is stopped with SIGTERM however the benchmark ends; leftover workers are killed
and mounts under its home detached.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.mounts import stop_process

from .benchlib.cli import BenchError, positive, require_tools, run_reporting, say
from .benchlib.daemons import CLI_TIMEOUT, ArtifactDaemon, artifactfs_daemon
from .benchlib.mounts import (
    FUSE_TYPE,
    READY_TIMEOUT,
    MountTable,
    default_scratch,
    filesystem_of,
    listdir_within,
    mounted,
    remove_tree,
    tail,
)
from .benchlib.origins import git_daemon
from .benchlib.paths import DOC, ROOT, WORK
from .benchlib.report import machine_lines, met, ms, ratio_line, row, write_doc
from .benchlib.repos import RepoInfo, RepoParams, ensure_repo, git, git_env
from .benchlib.rounds import Job, job_directory, rotating_rounds
from .benchlib.timing import wait_exactly

RESULTS_START = "<!-- bench-git-mount:results:start -->"
RESULTS_END = "<!-- bench-git-mount:results:end -->"
GOAL_PEER1 = 1.5
GOAL_PEER2 = 0.3
GOALS_ADD = (0.5, 1.0)
"""Seconds ``add-repo --async`` may take (median): the target, and the issue's ceiling."""
CLONE_TIMEOUT = 600.0
PEER1_ARGS = ("--depth", "1", "--filter=blob:none", "--no-checkout")
PEER2_ARGS = ("--depth", "1")


# -- artifactfs mount and add-repo ---------------------------------------------------------


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
class AddTiming:
    returned: float
    ready: float


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

    steps: list[tuple[str, Job]] = [
        ("artifactfs", artifactfs),
        ("peer1", peer1),
        ("peer2", peer2),
        ("daemon-warm", daemon_warm),
        ("daemon-cold", daemon_cold),
    ]
    for round_ in rotating_rounds(steps, runs, warmup):
        notes = []
        for name, step in round_.jobs:
            with job_directory(scratch / f"round{round_.number}-{name}") as where:
                notes.append(step(where, round_.record))
        say(f"{round_.label}: {', '.join(notes)}")
    return samples


# -- reporting -----------------------------------------------------------------------------


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
    lines = machine_lines()
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
    lines += [row(label, values) for label, values in rows]
    lines += ["", "| Ratio of medians | Value | Goal | Met |", "|---|---:|---:|:---:|"]
    lines += [ratio_line(label, value, goal) for label, value, goal in ratios]
    lines += ["", f"| {ADD} returned, median | Value (ms) | Goal (ms) | Met |"]
    lines.append("|---|---:|---:|:---:|")
    for goal in GOALS_ADD:
        for label, value in added:
            lines.append(f"| {label} | {ms(value)} | ≤ {ms(goal)} | {met(value <= goal)} |")
    return "\n".join(lines) + "\n"


# -- entry point ---------------------------------------------------------------------------


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
            git_daemon(repo.base, WORK / "git-daemon.log") as server,
            artifactfs_daemon(executable, scratch / "daemon-warm" / "home") as shared,
        ):
            url = server.url(repo.name)
            say(f"serving {repo.path} at {url}; artifactfs daemon on {shared.home}")
            samples = measure(executable, url, repo, args.runs, args.warmup, scratch, shared)
    finally:
        remove_tree(scratch)
    setup = Setup(args.runs, args.warmup, base, time.perf_counter() - started, generated)
    results = results_markdown(samples, repo, setup)
    print(results)
    if not args.no_write:
        write_doc(results, RESULTS_START, RESULTS_END)
        say(f"wrote the results into {DOC.relative_to(ROOT)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_reporting(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
