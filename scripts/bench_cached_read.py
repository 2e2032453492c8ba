"""Benchmark: reading a 1 GiB blob that is already in the CAS, through the mount, against
reading the CAS file itself (issue 6, row 4).

A bare git repository holding one 1 GiB file (`big.bin`, random bytes, stored uncompressed)
is made once under ``bench-work/cached-read/`` and served by ``git daemon`` on 127.0.0.1. Its
blob is put into a state home's CAS directly (what an earlier read would have left there).
Each run, alternating the order:

- peer: drop the page cache (``/proc/sys/vm/drop_caches``), then read the CAS file with
  ``dd bs=1M`` (first read), then again (re-read, from the page cache);
- artifactfs: mount the repository with that home (nothing is fetched: the blob is there),
  wait for the root listing, drop the page cache, read ``MNT/big.bin`` with ``dd bs=1M``
  (first read), then again (re-read: the kernel serves it from its page cache, the file being
  immutable and opened with ``keep_cache``).

Needs root (dropping the page cache; raising the mount's read-ahead, see
``artifactfs/mount/kernel_read_ahead.py``). Results go into docs/benchmarks.md unless
``--no-write``. Run it with ``scripts/bench cached`` (``python -m scripts.bench_cached_read``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .benchlib.cli import BenchError, positive, require_tools, run_reporting, say
from .benchlib.internals import GIT_SHA1, ContentStore, Digest
from .benchlib.mounts import listdir_within, mounted, remove_tree
from .benchlib.origins import git_daemon
from .benchlib.paths import WORK
from .benchlib.report import TIMES, machine_lines, met, write_doc
from .benchlib.repos import commit_one_file, git

HERE = WORK / "cached-read"
SIZE = 1 << 30
RESULTS_START = "<!-- bench-cached-read:results:start -->"
RESULTS_END = "<!-- bench-cached-read:results:end -->"
GOAL_FIRST = 2.0
GOAL_AGAIN = 5.0
"""GB/s through the mount: first read, re-read."""
_DD_RATE = re.compile(r"copied, ([0-9.]+) s")


def ensure_repo() -> tuple[Path, str]:
    """The bare repository and the blob id of big.bin (made once)."""
    bare = HERE / "repo.git"
    oid_file = HERE / "oid"
    if oid_file.exists():
        return bare, oid_file.read_text().strip()
    say("making a repository with a 1 GiB file (once)")
    shutil.rmtree(HERE, ignore_errors=True)
    HERE.mkdir(parents=True)
    data = HERE / "big.bin"
    with open(data, "wb") as out:
        for _ in range(SIZE >> 24):
            out.write(os.urandom(1 << 24))
    git("init", "-q", "--bare", "-b", "main", str(bare))
    oid = git("-c", "core.compression=0", "hash-object", "-w", str(data), cwd=bare).strip()
    commit_one_file(bare, oid, "big.bin")
    data.unlink()
    oid_file.write_text(oid + "\n")
    return bare, oid


def seed_cas(home: Path, bare: Path, oid: str) -> Path:
    """Put big.bin's blob into ``home``'s CAS, as an earlier read would have; its path."""
    store = ContentStore(home / "cas")
    digest = Digest(GIT_SHA1, oid)
    content = subprocess.Popen(["git", "cat-file", "blob", oid], cwd=bare, stdout=subprocess.PIPE)
    assert content.stdout is not None
    path = store.put(digest, iter(lambda: content.stdout.read(1 << 20), b""), SIZE)  # type: ignore[union-attr]
    if content.wait() != 0:
        raise BenchError("git cat-file failed")
    return path


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def dd_seconds(path: Path) -> float:
    result = subprocess.run(
        ["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True, text=True, check=False
    )
    match = _DD_RATE.search(result.stderr)
    if result.returncode != 0 or match is None:
        raise BenchError(f"dd {path} failed: {result.stderr.strip()[-200:]}")
    return float(match[1])


def measure_peer(cas_file: Path) -> tuple[float, float]:
    drop_page_cache()
    return dd_seconds(cas_file), dd_seconds(cas_file)


def measure_mount(executable: Path, url: str, home: Path, scratch: Path) -> tuple[float, float]:
    with mounted(executable, url, scratch, home=home) as mount:
        names, _ = listdir_within(mount.mountpoint, 120)
        if names != ["big.bin"]:
            raise BenchError(f"the mount lists {names}")
        drop_page_cache()
        return dd_seconds(mount.mountpoint / "big.bin"), dd_seconds(mount.mountpoint / "big.bin")


def rate(seconds: list[float]) -> float:
    return SIZE / statistics.median(seconds) / 1e9


def results_markdown(
    peer: list[tuple[float, float]], mount: list[tuple[float, float]], took: float
) -> str:
    rows = [
        ("artifactfs: first read through the mount", [m[0] for m in mount]),
        ("artifactfs: re-read through the mount", [m[1] for m in mount]),
        ("peer: first read of the CAS file", [p[0] for p in peer]),
        ("peer: re-read of the CAS file", [p[1] for p in peer]),
    ]
    lines = machine_lines()
    lines += [
        "",
        f"One 1 GiB blob, already in the CAS of a state home under `bench-work/` "
        f"({len(mount)} runs, page cache dropped before each first read; `dd bs=1M`; "
        f"the benchmark took {took:.0f} s).",
        "",
        "| Read of 1 GiB | Median (ms) | Min (ms) | Max (ms) | GB/s (median) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, values in rows:
        median = statistics.median(values)
        lines.append(
            f"| {label} | {median * 1000:,.0f} | {min(values) * 1000:,.0f} | "
            f"{max(values) * 1000:,.0f} | {SIZE / median / 1e9:.2f} |"
        )
    first, again = rate([m[0] for m in mount]), rate([m[1] for m in mount])
    peer_first, peer_again = rate([p[0] for p in peer]), rate([p[1] for p in peer])
    lines += [
        "",
        "| Through the mount | GB/s | of the peer's | Goal | Met |",
        "|---|---:|---:|---:|:---:|",
        f"| first read | {first:.2f} | {first / peer_first:.2f}{TIMES} | ≥ {GOAL_FIRST} GB/s | "
        f"{met(first >= GOAL_FIRST)} |",
        f"| re-read | {again:.2f} | {again / peer_again:.2f}{TIMES} | ≥ {GOAL_AGAIN} GB/s | "
        f"{met(again >= GOAL_AGAIN)} |",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench cached",
        description="Read a 1 GiB blob already in the CAS through an artifactfs mount, "
        "against reading the CAS file directly.",
    )
    parser.add_argument("--runs", type=positive, default=3, help="measured runs (default 3)")
    parser.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if os.geteuid() != 0:
        raise BenchError("needs root (to drop the page cache between reads)")
    executable = require_tools()
    bare, oid = ensure_repo()
    scratch = WORK / f"cached-read-runs-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    home = scratch / "home"
    home.mkdir(parents=True)
    peer: list[tuple[float, float]] = []
    mount: list[tuple[float, float]] = []
    try:
        cas_file = seed_cas(home, bare, oid)
        with git_daemon(HERE, HERE / "git-daemon.log") as origin:
            url = origin.url("repo.git")
            for index in range(args.runs):
                where = scratch / f"run-{index}"
                where.mkdir()
                order = ["peer", "mount"] if index % 2 == 0 else ["mount", "peer"]
                for which in order:
                    if which == "peer":
                        peer.append(measure_peer(cas_file))
                    else:
                        mount.append(measure_mount(executable, url, home, where))
                say(
                    f"run {index + 1}/{args.runs}: mount {SIZE / mount[-1][0] / 1e9:.2f} then "
                    f"{SIZE / mount[-1][1] / 1e9:.2f} GB/s; CAS file "
                    f"{SIZE / peer[-1][0] / 1e9:.2f} then {SIZE / peer[-1][1] / 1e9:.2f} GB/s"
                )
    finally:
        remove_tree(scratch)
    results = results_markdown(peer, mount, time.perf_counter() - started)
    print(results)
    if not args.no_write:
        write_doc(results, RESULTS_START, RESULTS_END)
        say("wrote the results into docs/benchmarks.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_reporting(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
