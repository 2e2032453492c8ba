"""Benchmark: a 1 GiB safetensors file of a Hub repository, read through an artifactfs mount,
against ``huggingface_hub.hf_hub_download`` of the same file from the same server in the same run.

A model of 128 float32 tensors of 8 MiB (1 GiB in all) is written once with the ``safetensors``
package and cached under ``bench-work/hub/``. The Hub stand-in of the test tree
(``tests/helpers/hub.py``) serves it as an LFS file on 127.0.0.1, from its own process so that
the server never competes with the measuring process for the GIL. Each round measures, in
rotating order, every time from an empty state home or cache:

- artifactfs, whole file: spawn ``artifactfs mount hf://bench/model MNT``, then ``cat`` the file
  to ``/dev/null`` as soon as the mount point appears (the read waits on the ready gate); the
  time until ``cat`` exits, and separately the time the ``cat`` alone took. Afterwards the file's
  ``user.artifactfs.cached`` must be its size: the blob is complete;
- peer: a Python process calling ``hf_hub_download`` for that file (spawn → exit), then the
  same ``cat`` of the downloaded file;
- artifactfs, one tensor: a cold mount, then a Python process that opens the mounted file with
  ``safetensors.safe_open`` and reads one tensor from the middle; the bytes the server sent for
  the file are counted by the stand-in, and compared with the tensor's size.

Medians and ratios are printed as markdown and written into the Hub section of
``docs/benchmarks.md`` (unless ``--no-write``). Run it with ``scripts/bench hub``
(``python -m scripts.bench_hub``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import xattr

from .benchlib.cli import BenchError, positive, require_tools, run_reporting, say
from .benchlib.mounts import default_scratch, filesystem_of, mounted, remove_tree
from .benchlib.origins import StandIn, hub_stand_in
from .benchlib.paths import ROOT, WORK
from .benchlib.report import TIMES, machine_lines, met, ms, write_doc
from .benchlib.rounds import Job, job_directory, rotating_rounds

HUB_WORK = WORK / "hub"
RESULTS_START = "<!-- bench-hub:results:start -->"
RESULTS_END = "<!-- bench-hub:results:end -->"
REPO_ID = "bench/model"
URL = f"hf://{REPO_ID}"
FILE = "model.safetensors"
TENSORS = 128
TENSOR_SHAPE = (2048, 1024)
"""float32: 8 MiB a tensor, 1 GiB for the file (plus its header)."""
MODEL_VERSION = 1
GOAL_WHOLE = 1.0
GOAL_EXTRA = 1 << 20
"""Bytes a header and one tensor may cost beyond the tensor itself."""
READ_TIMEOUT = 600.0
MiB = 1 << 20


# -- the model -----------------------------------------------------------------------------


def ensure_model() -> tuple[Path, float | None]:
    """The cached model file and the seconds its generation took (None: reused)."""
    target = HUB_WORK / f"model-v{MODEL_VERSION}-{TENSORS}x{TENSOR_SHAPE[0]}x{TENSOR_SHAPE[1]}"
    target = target.with_suffix(".safetensors")
    if target.exists():
        return target, None
    import numpy as np
    from safetensors.numpy import save_file

    say(f"writing {target.relative_to(ROOT)} (once)")
    started = time.perf_counter()
    rng = np.random.default_rng(MODEL_VERSION)
    tensors = {
        f"layers.{index:03d}.weight": rng.standard_normal(TENSOR_SHAPE, dtype=np.float32)
        for index in range(TENSORS)
    }
    HUB_WORK.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.tmp")
    save_file(tensors, str(partial))
    partial.rename(target)
    return target, time.perf_counter() - started


def serving(model: Path) -> contextlib.AbstractContextManager[StandIn]:
    """The Hub stand-in serving ``REPO_ID``: the model as an LFS file, and a config."""
    config = json.dumps({"architectures": ["Bench"], "tensors": TENSORS})
    return hub_stand_in(REPO_ID, {FILE: model}, {"config.json": config})


# -- measurements --------------------------------------------------------------------------


def hub_env(endpoint: str, cache: Path) -> dict[str, str]:
    """The stand-in as the Hub, an empty cache, no token, no Xet (the stand-in has none)."""
    return {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(cache),
        "HF_TOKEN": "",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def timed_cat(path: Path) -> float:
    """Seconds ``cat PATH > /dev/null`` took; a failure is a BenchError."""
    started = time.perf_counter()
    try:
        result = subprocess.run(
            ["cat", "--", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=READ_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"reading {path} took over {READ_TIMEOUT:.0f} s") from None
    if result.returncode != 0:
        raise BenchError(f"cat {path} failed: {result.stderr.strip()}")
    return time.perf_counter() - started


@dataclass
class Samples:
    mount_whole: list[float] = field(default_factory=list)
    """spawn mount → cat of the whole file finished"""
    mount_cat: list[float] = field(default_factory=list)
    """the cat alone, started once the mount point appeared"""
    peer_download: list[float] = field(default_factory=list)
    """spawn Python calling hf_hub_download → exit"""
    peer_whole: list[float] = field(default_factory=list)
    """the download, then cat of the downloaded file"""
    tensor_time: list[float] = field(default_factory=list)
    """spawn mount → one tensor read by safe_open in another process"""
    tensor_served: list[int] = field(default_factory=list)
    """bytes of the file the server sent for that"""
    tensor_bytes: int = 0


def measure_mount_whole(
    executable: Path, stand: StandIn, scratch: Path, size: int
) -> tuple[float, float]:
    """Seconds from spawning the mount to the whole file read, and of the read alone."""
    with mounted(executable, URL, scratch, env=hub_env(stand.endpoint, scratch / "hf")) as mount:
        mountpoint, started = mount.mountpoint, mount.started
        stand.clear()
        path = mountpoint / FILE
        cat = timed_cat(path)
        whole = time.perf_counter() - started
        cached = xattr.getxattr(str(path), "user.artifactfs.cached")
        if cached != str(size).encode():
            raise BenchError(f"after a whole read, user.artifactfs.cached is {cached!r}")
        served = stand.served(FILE)
    if served < size:
        raise BenchError(f"the server sent {served} bytes of a {size}-byte file")
    return whole, cat


def measure_peer(stand: StandIn, scratch: Path) -> tuple[float, float]:
    cache = scratch / "hf-home"
    code = (
        "import sys\nfrom huggingface_hub import hf_hub_download\n"
        f"print(hf_hub_download({REPO_ID!r}, {FILE!r}))\n"
    )
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **hub_env(stand.endpoint, cache)},
        timeout=READ_TIMEOUT,
        check=False,
    )
    downloaded = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(f"hf_hub_download failed: {result.stderr.strip()[-300:]}")
    path = Path(result.stdout.strip().splitlines()[-1])
    timed_cat(path)
    return downloaded, time.perf_counter() - started


TENSOR_READER = """
import sys
from safetensors import safe_open
with safe_open(sys.argv[1], framework="numpy") as model:
    names = sorted(model.keys())
    tensor = model.get_tensor(names[len(names) // 2])
print(tensor.nbytes, float(tensor[0, 0]))
"""


def measure_tensor(executable: Path, stand: StandIn, scratch: Path) -> tuple[float, int, int]:
    with mounted(executable, URL, scratch, env=hub_env(stand.endpoint, scratch / "hf")) as mount:
        mountpoint, started = mount.mountpoint, mount.started
        stand.clear()
        result = subprocess.run(
            [sys.executable, "-c", TENSOR_READER, str(mountpoint / FILE)],
            capture_output=True,
            text=True,
            timeout=READ_TIMEOUT,
            check=False,
        )
        took = time.perf_counter() - started
        if result.returncode != 0:
            raise BenchError(f"safe_open through the mount failed: {result.stderr.strip()[-300:]}")
        served = stand.served(FILE)
    return took, served, int(result.stdout.split()[0])


def measure(
    executable: Path, stand: StandIn, size: int, runs: int, warmup: int, scratch: Path
) -> Samples:
    samples = Samples()

    def whole(where: Path, record: bool) -> str:
        total, cat = measure_mount_whole(executable, stand, where, size)
        if record:
            samples.mount_whole.append(total)
            samples.mount_cat.append(cat)
        return f"mount+cat {total:.2f} s (cat {cat:.2f} s)"

    def peer(where: Path, record: bool) -> str:
        downloaded, total = measure_peer(stand, where)
        if record:
            samples.peer_download.append(downloaded)
            samples.peer_whole.append(total)
        return f"hf_hub_download {downloaded:.2f} s (+cat {total:.2f} s)"

    def tensor(where: Path, record: bool) -> str:
        took, served, nbytes = measure_tensor(executable, stand, where)
        if record:
            samples.tensor_time.append(took)
            samples.tensor_served.append(served)
            samples.tensor_bytes = nbytes
        return f"one tensor {took:.2f} s, {served / MiB:.2f} MiB served"

    jobs: list[tuple[str, Job]] = [
        ("artifactfs", whole),
        ("peer", peer),
        ("tensor", tensor),
    ]
    for round_ in rotating_rounds(jobs, runs, warmup):
        notes = []
        for name, job in round_.jobs:
            with job_directory(scratch / f"{round_.number}-{name}") as where:
                notes.append(job(where, round_.record))
        say(f"{round_.label}: " + "; ".join(notes))
    return samples


# -- report --------------------------------------------------------------------------------


def results_markdown(
    samples: Samples, size: int, took: float, generated: float | None, scratch: Path, runs: int
) -> str:
    def row(label: str, values: list[float]) -> str:
        median = statistics.median(values)
        rate = size / median / 1e6
        return f"| {label} | {ms(median)} | {ms(min(values))} | {ms(max(values))} | {rate:,.0f} |"

    whole = statistics.median(samples.mount_whole)
    peer = statistics.median(samples.peer_download)
    ratio = whole / peer
    served = statistics.median(samples.tensor_served)
    extra = served - samples.tensor_bytes
    tensor_time = statistics.median(samples.tensor_time)
    source = "written by this run" if generated is not None else "reused from bench-work/hub/"
    lines = machine_lines()
    lines += [
        "",
        f"Model ({source}): one `{FILE}` of {size:,} bytes ({TENSORS} float32 tensors of "
        f"{samples.tensor_bytes / MiB:.0f} MiB), an LFS file of the Hub stand-in "
        "(`tests/helpers/hub.py`) on 127.0.0.1, in its own process.",
        f"State homes, caches and mount points in `{scratch}` ({filesystem_of(scratch)}).",
        f"{runs} runs after a warm-up round, each from an empty home or cache; "
        f"the whole benchmark took {took:.0f} s.",
        "",
        "| Cold read of the whole file | Median (ms) | Min (ms) | Max (ms) | MB/s (median) |",
        "|---|---:|---:|---:|---:|",
        row("artifactfs: spawn `mount` → `cat` of the file finished", samples.mount_whole),
        row("artifactfs: the `cat` alone", samples.mount_cat),
        row("peer: spawn `hf_hub_download` → exit", samples.peer_download),
        row("peer: `hf_hub_download`, then `cat` of the downloaded file", samples.peer_whole),
        "",
        "| Ratio of medians | Value | Goal | Met |",
        "|---|---:|---:|:---:|",
        f"| artifactfs whole read / `hf_hub_download` | {ratio:.2f}{TIMES} | "
        f"≤ {GOAL_WHOLE}{TIMES} | {met(ratio <= GOAL_WHOLE)} |",
        "",
        "| Header and one tensor through `safe_open` | Median | Goal | Met |",
        "|---|---:|---:|:---:|",
        f"| bytes of the file sent by the server | {served / MiB:.2f} MiB | — | — |",
        f"| of which beyond the tensor ({samples.tensor_bytes / MiB:.0f} MiB) | "
        f"{extra / MiB:.2f} MiB | ≤ 1 MiB | {met(extra <= GOAL_EXTRA)} |",
        f"| spawn `mount` → tensor read | {ms(tensor_time)} ms | — | — |",
        f"| share of the file fetched | {served / size:.2%} | — | — |",
    ]
    return "\n".join(lines) + "\n"


# -- entry point ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench hub",
        description="Cold read of a 1 GiB safetensors file through an artifactfs hf:// mount "
        "against hf_hub_download from the same Hub stand-in, and the bytes one tensor costs.",
    )
    parser.add_argument("--runs", type=positive, default=3, help="measured runs (default 3)")
    parser.add_argument("--warmup", type=int, default=1, choices=range(0, 4), metavar="N")
    parser.add_argument("--scratch", metavar="DIR", help="where homes and caches go")
    parser.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    executable = require_tools()
    model, generated = ensure_model()
    size = model.stat().st_size
    base = Path(args.scratch).resolve() if args.scratch else default_scratch().resolve()
    needed = 2 * size + (256 * MiB)
    free = shutil.disk_usage(base).free
    if free < needed:
        raise BenchError(f"{base} has {free / MiB:.0f} MiB free; a round needs {needed / MiB:.0f}")
    scratch = base / f"bench-hub-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        with serving(model) as stand:
            say(f"serving {model.name} ({size / MiB:,.0f} MiB) at {stand.endpoint}")
            samples = measure(executable, stand, size, args.runs, args.warmup, scratch)
    finally:
        remove_tree(scratch)
    took = time.perf_counter() - started
    results = results_markdown(samples, size, took, generated, base, args.runs)
    print(results)
    if not args.no_write:
        write_doc(results, RESULTS_START, RESULTS_END)
        say("wrote the results into docs/benchmarks.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_reporting(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
