"""Benchmark: a fleet of N nodes (N state homes on this machine) mounting the same model from
the Hub stand-in with one shared tier (moto's S3 server over HTTP, or a shared directory),
against N independent ``hf_hub_download``s from the same stand-in.

A safetensors model (float32 tensors of 8 MiB, ``--tensors`` of them) is written once with the
``safetensors`` package and cached under ``bench-work/fleet/``; the Hub stand-in
(``tests/helpers/hub.py``) serves it from its own process. For each N (``--nodes``, default 1,
4 and 16), each scenario starting from an empty tier (a fresh prefix) and empty homes:

- fleet, one node first: one node mounts and reads the model; once the tier holds it (the
  node's write-behind, polled with a deadline), the other N - 1 nodes mount and read at once;
- fleet, all at once: the N nodes mount and read at the same moment on the empty tier;
- peer: N processes call ``hf_hub_download`` at the same moment, then read what they got.

Every node's reader is its own process: it opens the model with ``safetensors.safe_open``,
reads the middle tensor (time to first tensor), then reads the whole file and checks its
sha256 (full-read time; both from the moment all readers were released together). The bytes
of the model the stand-in sent are counted per scenario: the goal is one copy whatever N.

Results go into the fleet section of ``docs/benchmarks.md`` (unless ``--no-write``). Run it
with ``scripts/bench fleet`` (``python -m scripts.bench_fleet``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .benchlib.cli import BenchError, positive, require_tools, run_reporting, say
from .benchlib.mounts import default_scratch, filesystem_of, mounted, remove_tree
from .benchlib.origins import StandIn, hub_stand_in
from .benchlib.paths import ROOT, WORK
from .benchlib.report import machine_lines, write_doc

FLEET_WORK = WORK / "fleet"
RESULTS = "<!-- bench-fleet-{tier}:results:{end} -->"
"""One section per tier kind (``s3``, ``dir``) in docs/benchmarks.md."""
REPO_ID = "bench/fleet"
URL = f"hf://{REPO_ID}"
FILE = "model.safetensors"
TENSOR_SHAPE = (2048, 1024)
MODEL_VERSION = 1
BUCKET = "fleet"
READ_TIMEOUT = 900.0
TIER_WAIT = 300.0
MiB = 1 << 20

_FIRST_TENSOR_THEN_ALL = """
from safetensors import safe_open
with safe_open(path, framework="numpy") as model:
    names = sorted(model.keys())
    tensor = model.get_tensor(names[len(names) // 2])
first = time.perf_counter() - started
digest = hashlib.sha256()
with open(path, "rb") as data:
    while chunk := data.read(1 << 20):
        digest.update(chunk)
print(json.dumps({"first": first, "whole": time.perf_counter() - started,
                  "sha256": digest.hexdigest()}))
"""
"""What a reader process times once it has its file's path: the middle tensor through
safetensors (time to first tensor), then every byte (full read), both from its start."""

READER = (
    """
import hashlib, json, sys, time
path, go = sys.argv[1], float(sys.argv[2])
while time.time() < go:
    time.sleep(0.001)
started = time.perf_counter()
"""
    + _FIRST_TENSOR_THEN_ALL
)

PEER = (
    """
import hashlib, json, sys, time
from huggingface_hub import hf_hub_download
repo, name, go = sys.argv[1], sys.argv[2], float(sys.argv[3])
while time.time() < go:
    time.sleep(0.001)
started = time.perf_counter()
path = hf_hub_download(repo, name)
downloaded = time.perf_counter() - started
"""
    + _FIRST_TENSOR_THEN_ALL
)


# -- the model -----------------------------------------------------------------------------


def ensure_model(tensors: int) -> Path:
    target = FLEET_WORK / f"model-v{MODEL_VERSION}-{tensors}x{TENSOR_SHAPE[0]}x{TENSOR_SHAPE[1]}"
    target = target.with_suffix(".safetensors")
    if target.exists():
        return target
    import numpy as np
    from safetensors.numpy import save_file

    say(f"writing {target.relative_to(ROOT)} (once)")
    rng = np.random.default_rng(MODEL_VERSION)
    model = {
        f"layers.{index:03d}.weight": rng.standard_normal(TENSOR_SHAPE, dtype=np.float32)
        for index in range(tensors)
    }
    FLEET_WORK.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.tmp")
    save_file(model, str(partial))
    partial.rename(target)
    return target


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        while chunk := data.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


# -- the tier ------------------------------------------------------------------------------


class Tier:
    """The shared tier of a run: moto over HTTP (``s3``) or a directory (``dir``)."""

    def __init__(self, kind: str, scratch: Path, stack: contextlib.ExitStack) -> None:
        self.kind = kind
        self.scratch = scratch
        self.server = None
        if kind == "s3":
            from tests.helpers.s3 import running_s3

            self.server = stack.enter_context(running_s3(scratch / "moto.log"))
            self.server.make_bucket(BUCKET)

    def env(self, prefix: str) -> dict[str, str]:
        if self.server is None:
            return {"ARTIFACTFS_TIER_URL": f"file://{self.scratch / 'tier' / prefix}"}
        return {
            "ARTIFACTFS_TIER_URL": f"s3://{BUCKET}/{prefix}",
            "ARTIFACTFS_TIER_ENDPOINT": self.server.endpoint,
            # moto answers a ranged GET only after reading the whole object, and a PUT only
            # after storing it (~40 ms a MiB): silences far longer than a real S3's
            "ARTIFACTFS_TIER_TIMEOUT": "120",
            **self.server.env(),
        }

    def keys(self, prefix: str) -> set[str]:
        if self.server is None:
            root = self.scratch / "tier" / prefix
            return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        return {key.removeprefix(f"{prefix}/") for key in self.server.objects(BUCKET, prefix)}

    def wait_holding(self, prefix: str, sha256: str) -> float:
        """Seconds until the tier holds the model and its block list."""
        wanted = {f"blobs/sha256/{sha256[:2]}/{sha256}", f"blocks/sha256/{sha256[:2]}/{sha256}"}
        started = time.perf_counter()
        while not wanted <= self.keys(prefix):
            if time.perf_counter() - started > TIER_WAIT:
                raise BenchError(f"the tier did not hold the model within {TIER_WAIT:.0f} s")
            time.sleep(0.1)
        return time.perf_counter() - started


# -- measurements --------------------------------------------------------------------------


def hub_env(endpoint: str, cache: Path) -> dict[str, str]:
    return {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(cache),
        "HF_TOKEN": "",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


@dataclass
class NodeTimes:
    first: float
    whole: float


def run_readers(
    commands: list[list[str]], envs: list[dict[str, str]], sha256: str
) -> list[NodeTimes]:
    """Start the readers, released together; their times, each checked for the right bytes."""
    go = time.time() + 0.5 + 0.05 * len(commands)
    processes = [
        subprocess.Popen(
            [*command, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        for command, env in zip(commands, envs, strict=True)
    ]
    times = []
    for process in processes:
        out, err = process.communicate(timeout=READ_TIMEOUT)
        if process.returncode != 0:
            raise BenchError(f"a reader failed: {err.strip()[-300:]}")
        result = json.loads(out.strip().splitlines()[-1])
        if result["sha256"] != sha256:
            raise BenchError("a reader got wrong bytes")
        times.append(NodeTimes(result["first"], result["whole"]))
    return times


@contextlib.contextmanager
def nodes(
    executable: Path, stand: StandIn, tier: Tier, prefix: str, where: Path, count: int
) -> Iterator[list[Path]]:
    """``count`` mounted nodes (homes of their own), their model paths yielded."""
    with contextlib.ExitStack() as stack:
        paths = []
        for index in range(count):
            node = where / f"node-{index}"
            node.mkdir(parents=True)
            env = {**hub_env(stand.endpoint, node / "hf"), **tier.env(prefix)}
            mount = stack.enter_context(mounted(executable, URL, node, env=env))
            paths.append(mount.mountpoint / FILE)
        yield paths


def reader_commands(paths: list[Path]) -> list[list[str]]:
    return [[sys.executable, "-c", READER, str(path)] for path in paths]


@dataclass
class Scenario:
    name: str
    nodes: int
    served: int
    times: list[NodeTimes]
    note: str = ""


def fleet_first(
    executable: Path, stand: StandIn, tier: Tier, where: Path, count: int, sha256: str
) -> Scenario:
    prefix = f"first-{count}-{os.getpid()}"
    stand.clear()
    with nodes(executable, stand, tier, prefix, where / "first", 1) as first:
        times = run_readers(reader_commands(first), [{}], sha256)
        waited = tier.wait_holding(prefix, sha256)
    note = f"the tier held the model {waited:.1f} s after the first node's read"
    if count > 1:  # the times of the N - 1 others (the first one's is N = 1's)
        with nodes(executable, stand, tier, prefix, where / "rest", count - 1) as rest:
            times = run_readers(reader_commands(rest), [{}] * len(rest), sha256)
    name = "fleet, one node first" + (" (times: the N - 1 others)" if count > 1 else "")
    return Scenario(name, count, stand.served(FILE), times, note)


def fleet_at_once(
    executable: Path, stand: StandIn, tier: Tier, where: Path, count: int, sha256: str
) -> Scenario:
    prefix = f"once-{count}-{os.getpid()}"
    stand.clear()
    with nodes(executable, stand, tier, prefix, where / "once", count) as paths:
        times = run_readers(reader_commands(paths), [{}] * count, sha256)
    return Scenario("fleet, all at once", count, stand.served(FILE), times)


def peers(stand: StandIn, where: Path, count: int, sha256: str) -> Scenario:
    stand.clear()
    commands = [[sys.executable, "-c", PEER, REPO_ID, FILE] for _ in range(count)]
    envs = [hub_env(stand.endpoint, where / f"peer-{index}") for index in range(count)]
    times = run_readers(commands, envs, sha256)
    return Scenario("peer: `hf_hub_download`", count, stand.served(FILE), times)


# -- report --------------------------------------------------------------------------------


def results_markdown(
    scenarios: list[Scenario], size: int, tier: str, scratch: Path, took: float
) -> str:
    tier_text = (
        "moto's S3 server over HTTP (`tests/helpers/s3.py`, one process)"
        if tier == "s3"
        else "a directory on the same file system (`file://`)"
    )
    lines = machine_lines()
    lines += [
        "",
        f"Model: one `{FILE}` of {size:,} bytes ({size // (8 * MiB)} float32 tensors of 8 MiB), "
        "an LFS file of the Hub stand-in on 127.0.0.1, in its own process. "
        f"Tier: {tier_text}, empty at the start of each scenario. Homes and mount points in "
        f"`{scratch}` ({filesystem_of(scratch)}); every node is a mount worker with a home of "
        f"its own, all on this machine. The benchmark took {took:.0f} s.",
        "",
        "| Scenario | N | Model copies from the Hub | First tensor, median (max) | "
        "Full read, median (max) |",
        "|---|---:|---:|---:|---:|",
    ]
    for scenario in scenarios:
        firsts = [t.first for t in scenario.times]
        wholes = [t.whole for t in scenario.times]
        lines.append(
            f"| {scenario.name} | {scenario.nodes} | {scenario.served / size:.2f} | "
            f"{statistics.median(firsts):.2f} s ({max(firsts):.2f} s) | "
            f"{statistics.median(wholes):.2f} s ({max(wholes):.2f} s) |"
        )
    notes = [f"- {s.name}, N = {s.nodes}: {s.note}" for s in scenarios if s.note]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


# -- entry point ---------------------------------------------------------------------------


def node_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not counts or min(counts) < 1 or max(counts) > 64:
        raise argparse.ArgumentTypeError(f"node counts are 1 to 64: {text!r}")
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench fleet",
        description="N nodes mounting one Hub model with a shared tier, against N "
        "hf_hub_downloads: bytes from the origin, time to first tensor, full-read time.",
    )
    parser.add_argument("--nodes", type=node_counts, default=[1, 4, 16], help="e.g. 1,4,16")
    parser.add_argument("--tensors", type=positive, default=8, help="8 MiB tensors (default 8)")
    parser.add_argument("--tier", choices=("s3", "dir"), default="s3")
    parser.add_argument("--scratch", metavar="DIR", help="where homes and caches go")
    parser.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    executable = require_tools()
    model = ensure_model(args.tensors)
    size, sha256 = model.stat().st_size, sha256_of(model)
    base = Path(args.scratch).resolve() if args.scratch else default_scratch().resolve()
    needed = (2 * max(args.nodes) + 1) * size + 256 * MiB
    if shutil.disk_usage(base).free < needed:
        raise BenchError(f"{base} needs {needed / MiB:.0f} MiB free")
    scratch = base / f"bench-fleet-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    scenarios: list[Scenario] = []
    try:
        with contextlib.ExitStack() as stack:
            tier = Tier(args.tier, scratch, stack)
            stand = stack.enter_context(hub_stand_in(REPO_ID, {FILE: model}, {}))
            say(f"serving {model.name} ({size / MiB:,.0f} MiB) at {stand.endpoint}")
            for count in args.nodes:
                for measure in (fleet_first, fleet_at_once):
                    where = scratch / f"{measure.__name__}-{count}"
                    scenario = measure(executable, stand, tier, where, count, sha256)
                    remove_tree(where)
                    scenarios.append(scenario)
                    say(f"{scenario.name}, N={count}: {scenario.served / size:.2f} copies")
                where = scratch / f"peers-{count}"
                scenarios.append(peers(stand, where, count, sha256))
                remove_tree(where)
                say(f"peers, N={count}: {scenarios[-1].served / size:.2f} copies")
    finally:
        remove_tree(scratch)
    results = results_markdown(scenarios, size, args.tier, base, time.perf_counter() - started)
    print(results)
    if not args.no_write:
        start, end = (RESULTS.format(tier=args.tier, end=end) for end in ("start", "end"))
        write_doc(results, start, end)
        say("wrote the results into docs/benchmarks.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_reporting(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
