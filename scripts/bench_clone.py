"""Benchmark: ``artifactfs clone`` of a 1 GiB model on XFS (reflinks) against ``cp -r`` of the
same files and ``hf_hub_download`` into a fresh Hub cache, in the same run.

The model is ``scripts/bench_hub.py``'s (one 1 GiB safetensors file of 128 tensors, and a
config), served by the Hub stand-in from its own process on 127.0.0.1. Everything measured
lives on a loop-mounted XFS made with ``mkfs.xfs -m reflink=1`` (a sparse image in the
scratch directory; needs root and a loop device). Each round, in a fresh directory:

1. ``clone, cold``: ``artifactfs clone hf://bench/model DEST`` from an empty state home: the
   file fetched by parallel ranges into the store (verified there), then reflinked into DEST;
2. ``clone, warm``: the same into another DEST, the blob already in the store: a reflink,
   and the store's file hashed once (it was not fetched by this clone) before publishing; and
   with ``--trust-cache`` (the store's file taken as verified when stored: its size checked);
3. ``cp -r`` of the first clone's files (GNU cp 9 reflinks by default where it can), and
   ``cp -r --reflink=never`` (a real copy);
4. ``hf_hub_download`` of every file into an empty Hub cache (a Python process, spawn → exit).

Page caches are left as they are (the model was just written or read): the figures compare
the work each tool does, not the disk. Run it with ``scripts/bench clone``
(``python -m scripts.bench_clone``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .bench_hub import FILE, REPO_ID, ensure_model, hub_env, serving
from .benchlib.cli import BenchError, positive, require_tools, run_reporting, say
from .benchlib.mounts import artifactfs_env, default_scratch, remove_tree
from .benchlib.origins import StandIn
from .benchlib.paths import WORK
from .benchlib.report import TIMES, machine_lines, ms, write_doc

RESULTS_START = "<!-- bench-clone:results:start -->"
RESULTS_END = "<!-- bench-clone:results:end -->"
URL = f"hf://{REPO_ID}"
TIMEOUT = 600.0
MiB = 1 << 20


@contextlib.contextmanager
def xfs(base: Path, size: int) -> Iterator[Path]:
    """A loop-mounted XFS with reflinks, of ``size`` bytes (sparse), under ``base``."""
    if os.geteuid() != 0:
        raise BenchError("a loop-mounted XFS needs root")
    if shutil.which("mkfs.xfs") is None:
        raise BenchError("mkfs.xfs is missing (scripts/install --tests installs xfsprogs)")
    image = base / "xfs.img"
    with open(image, "wb") as out:
        out.truncate(size)
    _run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)])
    device = _run(["losetup", "--find", "--show", str(image)]).strip()
    mountpoint = base / "xfs"
    mountpoint.mkdir(exist_ok=True)
    try:
        _run(["mount", "-t", "xfs", device, str(mountpoint)])
        try:
            yield mountpoint
        finally:
            _run(["umount", str(mountpoint)])
    finally:
        subprocess.run(["losetup", "-d", device], check=False)
        image.unlink()


def _run(command: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise BenchError(f"{' '.join(command[:3])} failed: {result.stderr.strip()[-300:]}")
    return result.stdout


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    out = _run(command, env)
    return time.perf_counter() - started, out


@dataclass
class Samples:
    times: dict[str, list[float]] = field(default_factory=dict)
    summaries: dict[str, str] = field(default_factory=dict)
    """The last summary line of each clone."""
    shared: str = ""

    def add(self, name: str, seconds: float) -> None:
        self.times.setdefault(name, []).append(seconds)


def one_round(executable: Path, stand: StandIn, where: Path, samples: Samples | None) -> str:
    home = where / "home"
    env = {**artifactfs_env(home), **hub_env(stand.endpoint, where / "hf-unused")}
    env["ARTIFACTFS_CACHE_MAX_SIZE"] = "4G"  # the default (10 % of the image) would evict it
    notes = []

    def record(name: str, seconds: float) -> None:
        notes.append(f"{name} {seconds:.2f} s")
        if samples is not None:
            samples.add(name, seconds)

    took, out = timed([str(executable), "clone", URL, str(where / "cold")], env)
    record("clone, cold", took)
    if samples is not None:
        samples.summaries["clone, cold"] = out.strip()
    took, out = timed([str(executable), "clone", URL, str(where / "warm")], env)
    record("clone, warm", took)
    if samples is not None:
        samples.summaries["clone, warm"] = out.strip()
        samples.shared = _run(["filefrag", "-v", str(where / "warm" / FILE)])
    took, _ = timed([str(executable), "clone", URL, str(where / "trust"), "--trust-cache"], env)
    record("clone, warm, --trust-cache", took)
    took, _ = timed(["cp", "-r", str(where / "cold"), str(where / "cp")])
    record("cp -r", took)
    took, _ = timed(["cp", "-r", "--reflink=never", str(where / "cold"), str(where / "cp-copy")])
    record("cp -r --reflink=never", took)
    code = (
        "from huggingface_hub import hf_hub_download\n"
        f"for name in ({FILE!r}, 'config.json'):\n"
        f"    hf_hub_download({REPO_ID!r}, name)\n"
    )
    peer_env = {**os.environ, **hub_env(stand.endpoint, where / "hf-home")}
    took, _ = timed([sys.executable, "-c", code], peer_env)
    record("hf_hub_download", took)
    return "; ".join(notes)


def results_markdown(samples: Samples, size: int, runs: int, took: float, cp: str) -> str:
    lines = machine_lines()
    shared = [line for line in samples.shared.splitlines() if line.strip()[:1].isdigit()]
    lines += [
        "",
        f"Model: `{FILE}` of {size:,} bytes and a config, from the Hub stand-in on 127.0.0.1 "
        "(its own process). State home, DEST, copies and the Hub cache on a loop-mounted XFS "
        f"(`mkfs.xfs -m reflink=1`, a sparse image on the scratch disk). {runs} runs after a "
        f"warm-up round; the whole benchmark took {took:.0f} s. `cp`: {cp}.",
        "",
        "| 1 GiB model on XFS | Median (ms) | Min (ms) | Max (ms) |",
        "|---|---:|---:|---:|",
    ]
    labels = {
        "clone, cold": "`artifactfs clone`, empty home (fetch, verify, reflink)",
        "clone, warm": "`artifactfs clone`, blob in the store (reflink, hash the store's file)",
        "clone, warm, --trust-cache": "`artifactfs clone --trust-cache`, blob in the store "
        "(reflink; sizes checked)",
        "cp -r": "`cp -r` of the clone's files (GNU cp: reflink where it can)",
        "cp -r --reflink=never": "`cp -r --reflink=never` (a real copy)",
        "hf_hub_download": "`hf_hub_download` of every file into an empty Hub cache",
    }
    for name, label in labels.items():
        values = samples.times[name]
        median = statistics.median(values)
        lines.append(f"| {label} | {ms(median)} | {ms(min(values))} | {ms(max(values))} |")

    def ratio(a: str, b: str) -> str:
        value = statistics.median(samples.times[a]) / statistics.median(samples.times[b])
        return f"{value:.2f}{TIMES}"

    lines += [
        "",
        "| Ratio of medians | Value |",
        "|---|---:|",
        f"| `clone`, empty home / `hf_hub_download` (origin → usable directory) | "
        f"{ratio('clone, cold', 'hf_hub_download')} |",
        f"| `clone`, warm store / `cp -r --reflink=never` | "
        f"{ratio('clone, warm', 'cp -r --reflink=never')} |",
        f"| `clone --trust-cache`, warm store / `cp -r --reflink=never` | "
        f"{ratio('clone, warm, --trust-cache', 'cp -r --reflink=never')} |",
        "",
        f"Extents of a clone's file flagged `shared` by `filefrag -v`: "
        f"{sum('shared' in line for line in shared)} of {len(shared)}.",
        "",
        "Summary lines of the last run:",
        "",
        *(f"- {name}: `{text}`" for name, text in samples.summaries.items()),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench clone",
        description="artifactfs clone of a 1 GiB model on XFS against cp -r and "
        "hf_hub_download into a fresh cache.",
    )
    parser.add_argument("--runs", type=positive, default=3, help="measured runs (default 3)")
    parser.add_argument("--warmup", type=int, default=1, choices=range(0, 4), metavar="N")
    parser.add_argument("--scratch", metavar="DIR", help="where the XFS image goes")
    parser.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    executable = require_tools()
    model, _ = ensure_model()
    size = model.stat().st_size
    base = Path(args.scratch).resolve() if args.scratch else WORK
    if base == default_scratch() and str(base).startswith("/dev/shm"):
        base = WORK
    base.mkdir(parents=True, exist_ok=True)
    scratch = base / f"bench-clone-{os.getpid()}"
    scratch.mkdir()
    samples = Samples()
    cp = _run(["cp", "--version"]).splitlines()[0]
    try:
        with serving(model) as stand, xfs(scratch, 5 * size + 512 * MiB) as mountpoint:
            say(f"serving {model.name} ({size / MiB:,.0f} MiB) at {stand.endpoint}; XFS at "
                f"{mountpoint}")  # fmt: skip
            for number in range(args.warmup + args.runs):
                record = number >= args.warmup
                where = mountpoint / f"round-{number}"
                where.mkdir()
                try:
                    note = one_round(executable, stand, where, samples if record else None)
                finally:
                    shutil.rmtree(where, ignore_errors=True)
                label = f"run {number - args.warmup + 1}/{args.runs}" if record else "warm-up"
                say(f"{label}: {note}")
    finally:
        remove_tree(scratch)
    results = results_markdown(samples, size, args.runs, time.perf_counter() - started, cp)
    print(results)
    if not args.no_write:
        write_doc(results, RESULTS_START, RESULTS_END)
        say("wrote the results into docs/benchmarks.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_reporting(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
