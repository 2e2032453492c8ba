"""Benchmark: reading many files, a big tree, and many readers of one file (issue 6, rows 3,
5 and 7), each against its peer measured in the same run.

Every origin is a real ``git daemon`` on 127.0.0.1 that traces the pkt-lines upload-pack
receives (``GIT_TRACE_PACKET``), so the benchmark can count the fetches each measurement cost.
Each round runs every measurement once, from a cold (empty) state home, in a rotating order:

- **grep** (row 3): the 5,000-file repository of ``bench_git_mount.py`` (same generator,
  same cache). artifactfs: spawn ``artifactfs mount``, and as soon as the mount point is in
  the mount table run ``grep -r WORD MNT`` (it waits on the ready gate); timed from the spawn
  to grep's exit. Peer: spawn ``git clone --depth 1``, then the same ``grep -r`` over the clone
  (``--exclude-dir=.git`` for both); timed from the spawn of the clone to grep's exit. Both
  greps must print the same matches (paths made relative).
- **tree** (row 5): the same generator at 100,000 files and 100 commits. artifactfs: spawn →
  root listing returned (ready), then ``find MNT | wc -l`` (timed; it must count every file and
  directory and the root), then the mount process's peak RSS (``VmHWM``) just before unmount.
  Peer: ``git clone --depth 1 --no-checkout`` (spawn → exit); then, untimed, its checkout, and
  ``find`` over the checkout (``.git`` pruned) as a reference for the ``find`` figure.
- **readers** (row 7): a repository holding one 100 MiB file of random bytes, stored
  uncompressed. On one cold home, once the mount is ready, one ``cat FILE`` (spawn → exit); on
  another cold home, once ready, 32 ``cat FILE`` started together (first spawn → last exit).
  Then the same reads once more at once, from the page cache (what the readers cost by
  themselves). The server must be asked for the blob exactly once in each case (``want``
  lines in the trace); some readers' output is checked against the file's sha256.

Results go into docs/benchmarks.md (between the ``bench-reads`` markers) unless ``--no-write``
or ``--only``. Run it with ``scripts/bench reads``
(``python -m scripts.bench_reads``). Every mount is unmounted and every process
stopped however the benchmark ends.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tests.helpers.mounts import stop_process
from tests.helpers.servers import GitDaemon

from .benchlib.cli import BenchError, positive, require_tools, run_reporting, say
from .benchlib.mounts import (
    READY_TIMEOUT,
    default_scratch,
    filesystem_of,
    listdir_within,
    mounted,
    remove_tree,
)
from .benchlib.origins import git_daemon
from .benchlib.paths import WORK
from .benchlib.report import (
    TIMES,
    load_average,
    machine_lines,
    met,
    ratio_line,
    row,
    write_doc,
)
from .benchlib.repos import (
    SEED,
    RepoInfo,
    RepoParams,
    SourceText,
    commit_one_file,
    ensure_repo,
    git,
    git_env,
)
from .benchlib.rounds import Job, job_directory, rotating_rounds
from .benchlib.timing import RUN_TIMEOUT, run_timed, wait_exactly

RESULTS_START = "<!-- bench-reads:results:start -->"
RESULTS_END = "<!-- bench-reads:results:end -->"
GOAL_GREP = 1.5
GOAL_READY = 1.5
GOAL_RSS = 200 * 2**20
GOAL_READERS = 1.2
GOAL_FETCHES = 1
GREP_FILES = RepoParams(5000, 5000)
"""The repository of scripts/bench_git_mount.py's default run (shared cache)."""
TREE_COMMITS = 100
READERS_WORK = WORK / "many-readers"
BIG_SIZE = 100 << 20
BIG_NAME = "big.bin"
CHECKED_READERS = (0, 15, 31)
"""Readers (by index) whose output goes to a file and is checked; the others' to /dev/null."""
MiB = 1 << 20


# -- the peers' git clone -----------------------------------------------------------------


def clone(url: str, target: Path, *extra: str) -> tuple[float, float]:
    """``git clone -q EXTRA URL TARGET``: its spawn and exit."""
    return run_timed(
        ["git", "clone", "-q", *extra, url, str(target)],
        f"git clone {' '.join(extra)}",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        env=git_env(),
    )


# -- row 3: grep -r over every file ----------------------------------------------------------


def pick_word(repo: RepoInfo) -> str:
    """A word of the generator's vocabulary that some, not most, files contain (closest to
    5 % of them), chosen the same way every time."""
    words = SourceText(random.Random(SEED)).words
    best: tuple[float, str] | None = None
    for word in random.Random(SEED + 3).sample(words, 20):
        found = git("grep", "-l", "-F", "-e", word, "HEAD", cwd=repo.path).splitlines()
        distance = abs(len(found) / repo.files - 0.05)
        if best is None or distance < best[0]:
            best = (distance, word)
    assert best is not None
    return best[1]


def grep(root: Path, word: str, output: Path) -> tuple[float, float]:
    """``grep -r --exclude-dir=.git -F -e WORD ROOT > OUTPUT``: its spawn and exit."""
    with open(output, "wb") as out:
        return run_timed(
            ["grep", "-r", "--exclude-dir=.git", "-F", "-e", word, str(root)],
            "grep -r",
            stdin=subprocess.DEVNULL,
            stdout=out,
            env={**os.environ, "LC_ALL": "C"},
        )


def matches(output: Path, root: Path) -> list[bytes]:
    """grep's output lines with ``ROOT/`` taken off, sorted (the two trees list their
    directories in different orders)."""
    prefix = os.fsencode(root) + b"/"
    lines = output.read_bytes().splitlines()
    if any(not line.startswith(prefix) for line in lines):
        raise BenchError(f"grep printed a line outside {root}")
    return sorted(line[len(prefix) :] for line in lines)


@dataclass
class GrepSamples:
    word: str
    reference: list[bytes]
    """The matches of a clone made before the first round (untimed): every grep, through the
    mount or over a clone, must print exactly these."""
    mount: list[float] = field(default_factory=list)
    """spawn ``artifactfs mount`` → grep exited"""
    peer: list[float] = field(default_factory=list)
    """spawn ``git clone --depth 1`` → grep exited"""
    peer_clone: list[float] = field(default_factory=list)
    """the clone alone"""
    fetches: list[int] = field(default_factory=list)
    """fetch requests the server got during each artifactfs measurement"""
    rss: list[int] = field(default_factory=list)

    @property
    def files(self) -> int:
        return len({line.split(b":", 1)[0] for line in self.reference})


def reference_matches(url: str, word: str, where: Path) -> list[bytes]:
    clone(url, where / "clone", "--depth", "1")
    grep(where / "clone", word, where / "grep.out")
    found = matches(where / "grep.out", where / "clone")
    if not found:
        raise BenchError(f"{word!r} is in no file of the clone")
    return found


def grep_mount(
    executable: Path, url: str, origin: GitDaemon, samples: GrepSamples, where: Path, record: bool
) -> str:
    mark = origin.trace_mark()
    with mounted(executable, url, where) as mount:
        if not record:  # warm-up: the mount until ready, not 5,000 fetches
            listdir_within(mount.mountpoint, READY_TIMEOUT)
            return "artifactfs ready"
        _, ended = grep(mount.mountpoint, samples.word, where / "grep.out")
        rss = mount.peak_rss()
        found = matches(where / "grep.out", mount.mountpoint)
    took = ended - mount.started
    fetches = origin.fetch_commands(since=mark)
    if found != samples.reference:
        raise BenchError(
            f"grep through the mount printed {len(found)} lines, not the clone's "
            f"{len(samples.reference)}"
        )
    samples.mount.append(took)
    samples.fetches.append(fetches)
    samples.rss.append(rss)
    return f"artifactfs mount+grep {took:.2f} s ({fetches} fetch requests)"


def grep_peer(url: str, samples: GrepSamples, where: Path, record: bool) -> str:
    target = where / "clone"
    started, cloned = clone(url, target, "--depth", "1")
    _, ended = grep(target, samples.word, where / "grep.out")
    if matches(where / "grep.out", target) != samples.reference:
        raise BenchError("grep over the clone printed other matches than the reference")
    if record:
        samples.peer.append(ended - started)
        samples.peer_clone.append(cloned - started)
    return f"clone+grep {ended - started:.2f} s (clone {cloned - started:.2f} s)"


# -- row 5: a 100,000-file tree ----------------------------------------------------------------


@dataclass
class TreeSamples:
    entries: int
    """What ``find`` must count: every file and directory, and the root."""
    ready: list[float] = field(default_factory=list)
    peer: list[float] = field(default_factory=list)
    find: list[float] = field(default_factory=list)
    find_checkout: list[float] = field(default_factory=list)
    counted: list[int] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)


def count_entries(command: str, root: Path, where: Path) -> tuple[float, int]:
    """Seconds a ``find ... | wc -l`` pipeline (``command``, with ``$1`` the root) took, and
    the number it printed."""
    output = where / "count.out"
    with open(output, "wb") as out:
        started, ended = run_timed(
            ["bash", "-o", "pipefail", "-c", command, "count", str(root)],
            "find | wc -l",
            stdin=subprocess.DEVNULL,
            stdout=out,
        )
    return ended - started, int(output.read_text())


def tree_mount(
    executable: Path, url: str, repo: RepoInfo, samples: TreeSamples, where: Path, record: bool
) -> str:
    with mounted(executable, url, where) as mount:
        names, listed = listdir_within(mount.mountpoint, READY_TIMEOUT)
        if sorted(names) != repo.root_names:
            raise BenchError(f"the mount listed {sorted(names)[:8]}..., not the repository root")
        took, counted = count_entries('find "$1" | wc -l', mount.mountpoint, where)
        rss = mount.peak_rss()
    if counted != samples.entries:
        raise BenchError(f"find counted {counted} entries in the mount, not {samples.entries}")
    if record:
        samples.ready.append(listed - mount.started)
        samples.find.append(took)
        samples.counted.append(counted)
        samples.rss.append(rss)
    return (
        f"artifactfs ready {listed - mount.started:.2f} s, find {took:.2f} s, "
        f"peak RSS {rss / MiB:.0f} MiB"
    )


def tree_peer(url: str, repo: RepoInfo, samples: TreeSamples, where: Path, record: bool) -> str:
    target = where / "clone"
    started, ended = clone(url, target, "--depth", "1", "--no-checkout")
    if git("rev-parse", "HEAD", cwd=target).strip() != repo.tip:
        raise BenchError(f"the clone at {target} is not at {repo.tip}")
    git("reset", "-q", "--hard", cwd=target)  # untimed: a checkout to run find over
    took, counted = count_entries(
        'find "$1" -path "$1/.git" -prune -o -print | wc -l', target, where
    )
    if counted != samples.entries:
        raise BenchError(f"find counted {counted} entries in the checkout, not {samples.entries}")
    if record:
        samples.peer.append(ended - started)
        samples.find_checkout.append(took)
    return f"clone --no-checkout {ended - started:.2f} s, find over a checkout {took:.2f} s"


# -- row 7: many readers of one cold file --------------------------------------------------------


@dataclass(frozen=True)
class BigFile:
    base: Path
    """What ``git daemon`` serves; holds ``repo.git``."""
    oid: str
    sha256: str


def ensure_big_repo() -> tuple[BigFile, float | None]:
    """A bare repository whose one commit holds ``big.bin``, 100 MiB of random bytes stored
    uncompressed (made once under bench-work/many-readers/); and the seconds making it took."""
    bare = READERS_WORK / "repo.git"
    info = READERS_WORK / "blob"
    if info.exists():
        oid, digest = info.read_text().split()
        return BigFile(READERS_WORK, oid, digest), None
    say(f"making a repository with one {BIG_SIZE >> 20} MiB file (once)")
    started = time.perf_counter()
    shutil.rmtree(READERS_WORK, ignore_errors=True)
    READERS_WORK.mkdir(parents=True)
    data = READERS_WORK / BIG_NAME
    rng = random.Random(SEED)
    with open(data, "wb") as out:
        for _ in range(BIG_SIZE // MiB):
            out.write(rng.randbytes(MiB))
    with open(data, "rb") as source:
        digest = hashlib.file_digest(source, "sha256").hexdigest()
    git("init", "-q", "--bare", "-b", "main", str(bare))
    git("config", "core.compression", "0", cwd=bare)  # what the server packs, it stores
    oid = git("hash-object", "-w", str(data), cwd=bare).strip()
    commit_one_file(bare, oid, BIG_NAME)
    git("repack", "-a", "-d", "-q", cwd=bare)  # upload-pack then reuses the packed bytes
    data.unlink()
    info.write_text(f"{oid} {digest}\n")
    return BigFile(READERS_WORK, oid, digest), time.perf_counter() - started


@dataclass
class ReaderSamples:
    readers: int
    one: list[float] = field(default_factory=list)
    """one reader: spawn → exit"""
    many: list[float] = field(default_factory=list)
    """``readers`` readers: first spawn → last exit"""
    wants_one: list[int] = field(default_factory=list)
    wants_many: list[int] = field(default_factory=list)
    fetches_one: list[int] = field(default_factory=list)
    fetches_many: list[int] = field(default_factory=list)
    rss_one: list[int] = field(default_factory=list)
    rss_many: list[int] = field(default_factory=list)
    again_one: list[float] = field(default_factory=list)
    """the same reads once more, right after: the file is in the page cache"""
    again_many: list[float] = field(default_factory=list)
    checked: int = 0
    """Reader outputs whose sha256 was checked, in all."""


def read_together(path: Path, count: int, where: Path, tag: str) -> tuple[float, list[Path]]:
    """Start ``count`` ``cat PATH`` at once; seconds from the first spawn to the last exit,
    and the files the checked readers wrote."""
    processes: list[subprocess.Popen[bytes]] = []
    outputs: list[Path] = []
    try:
        started = time.perf_counter()
        for index in range(count):
            if index in CHECKED_READERS:
                outputs.append(where / f"{tag}-reader-{index}.out")
                with open(outputs[-1], "wb") as out:
                    processes.append(subprocess.Popen(["cat", str(path)], stdout=out))
            else:
                processes.append(subprocess.Popen(["cat", str(path)], stdout=subprocess.DEVNULL))
        last = started
        for process in processes:
            code, ended = wait_exactly(process, RUN_TIMEOUT)
            if code is None:
                raise BenchError(f"a reader of {path} took over {RUN_TIMEOUT:.0f} s")
            if code != 0:
                raise BenchError(f"a reader of {path} exited with {code}")
            last = max(last, ended)
        return last - started, outputs
    finally:
        for process in processes:
            stop_process(process)


def readers_mount(
    executable: Path,
    url: str,
    origin: GitDaemon,
    big: BigFile,
    count: int,
    samples: ReaderSamples,
    where: Path,
    record: bool,
) -> str:
    with mounted(executable, url, where) as mount:
        names, _ = listdir_within(mount.mountpoint, READY_TIMEOUT)
        if names != [BIG_NAME]:
            raise BenchError(f"the mount lists {names}, not {BIG_NAME}")
        mark = origin.trace_mark()  # after the prepare: only what the reads cost
        took, outputs = read_together(mount.mountpoint / BIG_NAME, count, where, "cold")
        rss = mount.peak_rss()
        again, more = read_together(mount.mountpoint / BIG_NAME, count, where, "again")
        outputs += more
    wants = origin.wanted(since=mark).count(big.oid)
    fetches = origin.fetch_commands(since=mark)
    for output in outputs:
        with open(output, "rb") as out:
            if hashlib.file_digest(out, "sha256").hexdigest() != big.sha256:
                raise BenchError(f"a reader of the mount got other bytes ({output.name})")
        output.unlink()
    if record:
        samples.checked += len(outputs)
        if count == 1:
            samples.one.append(took)
            samples.wants_one.append(wants)
            samples.fetches_one.append(fetches)
            samples.rss_one.append(rss)
            samples.again_one.append(again)
        else:
            samples.many.append(took)
            samples.wants_many.append(wants)
            samples.fetches_many.append(fetches)
            samples.rss_many.append(rss)
            samples.again_many.append(again)
    return f"{count} reader(s) {took:.2f} s, again {again:.2f} s ({wants} want(s) of the blob)"


# -- the rounds --------------------------------------------------------------------------------


@dataclass
class Origins:
    """The three served repositories and their traced daemons."""

    grep_url: str
    grep_origin: GitDaemon
    tree_url: str
    tree_repo: RepoInfo
    readers_url: str
    readers_origin: GitDaemon
    big: BigFile


@dataclass
class Results:
    grep: GrepSamples | None
    tree: TreeSamples | None
    readers: ReaderSamples | None


def measure(
    executable: Path, origins: Origins, results: Results, runs: int, warmup: int, scratch: Path
) -> None:
    """``warmup`` unrecorded rounds, then ``runs`` rounds; each round runs every selected
    measurement once, in an order rotated by one from the round before."""
    jobs: list[tuple[str, Job]] = []
    o = origins
    if results.grep is not None:
        jobs.append(
            ("grep-mount", partial(grep_mount, executable, o.grep_url, o.grep_origin, results.grep))
        )
        jobs.append(("grep-peer", partial(grep_peer, o.grep_url, results.grep)))
    if results.tree is not None:
        jobs.append(
            ("tree-mount", partial(tree_mount, executable, o.tree_url, o.tree_repo, results.tree))
        )
        jobs.append(("tree-peer", partial(tree_peer, o.tree_url, o.tree_repo, results.tree)))
    if results.readers is not None:
        for count in (1, results.readers.readers):
            readers = partial(
                readers_mount,
                executable,
                o.readers_url,
                o.readers_origin,
                o.big,
                count,
                results.readers,
            )
            jobs.append((f"readers-{count}", readers))
    for round_ in rotating_rounds(jobs, runs, warmup):
        for name, step in round_.jobs:
            with job_directory(scratch / f"{round_.number}-{name}") as where:
                say(f"{round_.label}: {step(where, round_.record)}")


# -- report ------------------------------------------------------------------------------------


def grep_markdown(samples: GrepSamples, repo: RepoInfo) -> list[str]:
    ratio = statistics.median(samples.mount) / statistics.median(samples.peer)
    return [
        "### Cold `grep -r` over every file",
        "",
        f"Repository: {repo.files:,} files in {repo.directories:,} directories, "
        f"{repo.content_bytes / MiB:.1f} MiB at HEAD, {repo.commits:,} commits "
        f"(the one of `scripts/bench git`). `grep -r --exclude-dir=.git -F -e "
        f"{samples.word}` printed the same {len(samples.reference):,} lines from "
        f"{samples.files:,} files through the mount and over every clone.",
        "",
        "| Measurement | Median (ms) | Min (ms) | Max (ms) |",
        "|---|---:|---:|---:|",
        row("artifactfs: spawn `mount` → `grep -r` exited", samples.mount),
        row("peer: spawn `git clone --depth 1` → `grep -r` exited", samples.peer),
        row("peer: of which the clone", samples.peer_clone),
        "",
        "| Ratio of medians | Value | Goal | Met |",
        "|---|---:|---:|:---:|",
        ratio_line("artifactfs / peer", ratio, GOAL_GREP),
        "",
        f"Fetch requests the server got per artifactfs run (prepare included): median "
        f"{statistics.median(samples.fetches):,.0f}; worker peak RSS (VmHWM) median "
        f"{statistics.median(samples.rss) / MiB:.0f} MiB.",
        "",
    ]


def tree_markdown(samples: TreeSamples, repo: RepoInfo) -> list[str]:
    ready = statistics.median(samples.ready) / statistics.median(samples.peer)
    find = statistics.median(samples.find) / statistics.median(samples.find_checkout)
    rss, rss_max = statistics.median(samples.rss), max(samples.rss)
    return [
        "### A 100,000-file tree",
        "",
        f"Repository: {repo.files:,} files in {repo.directories:,} directories, "
        f"{repo.content_bytes / MiB:,.0f} MiB at HEAD, {repo.commits:,} commits, "
        f"{repo.pack_bytes / MiB:,.0f} MiB packed (same generator, `--files {repo.files}`).",
        "",
        "| Measurement | Median (ms) | Min (ms) | Max (ms) |",
        "|---|---:|---:|---:|",
        row("artifactfs: spawn `mount` → root listing returned (ready)", samples.ready),
        row("peer: `git clone --depth 1 --no-checkout`", samples.peer),
        row("artifactfs: `find MNT \\| wc -l` (after ready)", samples.find),
        row("reference: the same `find` over a checkout (`.git` pruned)", samples.find_checkout),
        "",
        "| Ratio of medians | Value | Goal | Met |",
        "|---|---:|---:|:---:|",
        ratio_line("artifactfs ready / peer", ready, GOAL_READY),
        f"| `find` through the mount / over the checkout | {find:.1f}{TIMES} | — | — |",
        "",
        "| Other | Value | Goal | Met |",
        "|---|---:|---:|:---:|",
        f"| entries `find` counted (every run) | {samples.counted[0]:,} | "
        f"{samples.entries:,} | {met(all(c == samples.entries for c in samples.counted))} |",
        f"| worker peak RSS (VmHWM), median | {rss / MiB:.0f} MiB | ≤ {GOAL_RSS // MiB} MiB | "
        f"{met(rss <= GOAL_RSS)} |",
        f"| worker peak RSS (VmHWM), largest | {rss_max / MiB:.0f} MiB | "
        f"≤ {GOAL_RSS // MiB} MiB | {met(rss_max <= GOAL_RSS)} |",
        "",
    ]


def readers_markdown(samples: ReaderSamples) -> list[str]:
    count = samples.readers
    ratio = statistics.median(samples.many) / statistics.median(samples.one)
    wants_max = max(samples.wants_one + samples.wants_many)
    return [
        f"### {count} readers of one cold file",
        "",
        f"Repository: one commit, one file of {BIG_SIZE // MiB} MiB of random bytes stored "
        "uncompressed (`core.compression=0`, packed). Each measurement on a cold home, once "
        f"the mount is ready; readers are `cat FILE`. {samples.checked} reader outputs were "
        "checked against the file's sha256, all equal.",
        "",
        "| Measurement | Median (ms) | Min (ms) | Max (ms) |",
        "|---|---:|---:|---:|",
        row("1 reader: spawn → exit", samples.one),
        row(f"{count} readers: first spawn → last exit", samples.many),
        row("1 reader again, at once (the file in the page cache)", samples.again_one),
        row(f"{count} readers again, at once (the file in the page cache)", samples.again_many),
        "",
        "| Ratio of medians | Value | Goal | Met |",
        "|---|---:|---:|:---:|",
        ratio_line(f"{count} readers / 1 reader", ratio, GOAL_READERS),
        "",
        "| Origin fetches of the blob (`want` lines), every run | Value | Goal | Met |",
        "|---|---:|---:|:---:|",
        f"| 1 reader | {', '.join(map(str, samples.wants_one))} | {GOAL_FETCHES} | "
        f"{met(all(w == GOAL_FETCHES for w in samples.wants_one))} |",
        f"| {count} readers | {', '.join(map(str, samples.wants_many))} | {GOAL_FETCHES} | "
        f"{met(all(w == GOAL_FETCHES for w in samples.wants_many))} |",
        "",
        f"Fetch requests in all after ready: 1 reader {max(samples.fetches_one)}, {count} "
        f"readers {max(samples.fetches_many)} (largest of the runs); most `want`s of the blob in "
        f"any run: {wants_max}. Worker peak RSS (VmHWM), median: 1 reader "
        f"{statistics.median(samples.rss_one) / MiB:.0f} MiB, {count} readers "
        f"{statistics.median(samples.rss_many) / MiB:.0f} MiB.",
        "",
    ]


@dataclass(frozen=True)
class Setup:
    runs: int
    warmup: int
    scratch: Path
    took: float
    load_before: str
    load_after: str
    generated: list[str]


def results_markdown(
    results: Results, grep_repo: RepoInfo | None, tree_repo: RepoInfo | None, setup: Setup
) -> str:
    lines = machine_lines()
    lines += [
        f"- Load average (1, 5, 15 min): {setup.load_before} at the start, "
        f"{setup.load_after} at the end",
        "",
        f"Servers: `git daemon` on 127.0.0.1 (packets traced). State homes, mount points, "
        f"clones and outputs in `{setup.scratch}` ({filesystem_of(setup.scratch)}). "
        f"{setup.runs} run{'s' if setup.runs != 1 else ''} after {setup.warmup} warm-up round"
        f"{'s' if setup.warmup != 1 else ''}, every measurement of a round from a cold home, "
        f"in a rotating order; the benchmark took {setup.took:.0f} s"
        + (f" ({'; '.join(setup.generated)})." if setup.generated else "."),
        "",
    ]
    if results.grep is not None and grep_repo is not None:
        lines += grep_markdown(results.grep, grep_repo)
    if results.tree is not None and tree_repo is not None:
        lines += tree_markdown(results.tree, tree_repo)
    if results.readers is not None:
        lines += readers_markdown(results.readers)
    return "\n".join(lines).rstrip("\n") + "\n"


# -- entry point -------------------------------------------------------------------------------

ROWS = ("grep", "tree", "readers")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench reads",
        description="Cold grep -r over a 5,000-file mount against git clone + grep; a "
        "100,000-file tree (ready, find, peak RSS) against git clone --no-checkout; 32 "
        "readers of one cold 100 MiB file against one reader.",
    )
    parser.add_argument("--runs", type=positive, default=3, help="measured runs (default 3)")
    parser.add_argument("--warmup", type=int, default=1, choices=range(0, 4), metavar="N")
    parser.add_argument(
        "--only",
        action="append",
        choices=ROWS,
        help="run only this measurement (repeatable); the results are printed, not written",
    )
    parser.add_argument(
        "--tree-files", type=positive, default=100_000, help="files of the big tree (100000)"
    )
    parser.add_argument("--readers", type=positive, default=32, help="concurrent readers (32)")
    parser.add_argument("--scratch", metavar="DIR", help="where homes, mounts and clones go")
    parser.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    load_before = load_average()
    executable = require_tools()
    rows = set(args.only or ROWS)
    base = Path(args.scratch).resolve() if args.scratch else default_scratch().resolve()
    if not base.is_dir():
        raise BenchError(f"--scratch {args.scratch}: not a directory")
    WORK.mkdir(exist_ok=True)
    generated: list[str] = []
    grep_repo, took = ensure_repo(GREP_FILES)
    if took is not None:
        generated.append(f"generating the 5,000-file repository: {took:.0f} s")
    tree_repo = grep_repo
    if "tree" in rows:
        tree_repo, took = ensure_repo(RepoParams(args.tree_files, TREE_COMMITS))
        if took is not None:
            generated.append(f"generating the {args.tree_files:,}-file repository: {took:.0f} s")
    big, took = ensure_big_repo()
    if took is not None:
        generated.append(f"making the {BIG_SIZE // MiB} MiB file's repository: {took:.0f} s")
    scratch = base / f"bench-reads-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        with contextlib.ExitStack() as stack:
            grep_origin = stack.enter_context(
                git_daemon(grep_repo.base, scratch / "grep-daemon.log", scratch / "grep.trace")
            )
            tree_origin = stack.enter_context(
                git_daemon(tree_repo.base, scratch / "tree-daemon.log", scratch / "tree.trace")
            )
            readers_origin = stack.enter_context(
                git_daemon(big.base, scratch / "readers-daemon.log", scratch / "readers.trace")
            )
            origins = Origins(
                grep_origin.url(grep_repo.name),
                grep_origin,
                tree_origin.url(tree_repo.name),
                tree_repo,
                readers_origin.url("repo.git"),
                readers_origin,
                big,
            )
            results = Results(None, None, None)
            if "grep" in rows:
                word = pick_word(grep_repo)
                where = scratch / "reference"
                where.mkdir()
                results.grep = GrepSamples(word, reference_matches(origins.grep_url, word, where))
                remove_tree(where)
                say(f"grep word {word!r}: {len(results.grep.reference)} matching lines")
            if "tree" in rows:
                results.tree = TreeSamples(tree_repo.files + tree_repo.directories + 1)
            if "readers" in rows:
                results.readers = ReaderSamples(args.readers)
            measure(executable, origins, results, args.runs, args.warmup, scratch)
    finally:
        remove_tree(scratch)
    setup = Setup(
        args.runs,
        args.warmup,
        base,
        time.perf_counter() - started,
        load_before,
        load_average(),
        generated,
    )
    report = results_markdown(results, grep_repo, tree_repo if "tree" in rows else None, setup)
    print(report)
    if args.only:
        say("--only: docs/benchmarks.md left as it is")
    elif not args.no_write:
        write_doc(report, RESULTS_START, RESULTS_END)
        say("wrote the results into docs/benchmarks.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_reporting(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
