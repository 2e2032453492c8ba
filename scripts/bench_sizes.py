"""How to learn blob sizes for ``ls -l`` without fetching contents: the measurement behind the
choice written down in docs/architecture.md ("Blob sizes").

Against a git server URL, compares, each as the median of several runs:

- ``blob:none`` + ``object-info``: the tree without contents, then every size in one request
  (what artifactfs does when the server offers object-info);
- ``blob:limit=N``: the tree plus every blob up to N bytes (sizes of the rest stay unknown);
- no filter: the whole depth-1 commit, contents included;
- one fetch per blob: what a plain partial clone does on ``stat`` (extrapolated from a sample).

Usage (from the root): .venv/bin/python -m scripts.bench_sizes git://127.0.0.1:PORT/repo.git
[--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dulwich.objects import Blob, Commit, Tree

from .benchlib.internals import (
    GitSourceSpec,
    iter_objects,
    object_info,
    open_client,
    parse_source,
    received_pack,
)

T = TypeVar("T")
NO_LIMIT = 1 << 40
"""``max_bytes`` of every fetch: the measurement takes whatever the server sends."""


def git_spec(url: str) -> GitSourceSpec:
    spec = parse_source(url)
    if not isinstance(spec, GitSourceSpec):
        raise SystemExit(f"{url}: not a git URL")
    return spec


def fetch(url: str, temp: Path, filter_spec: bytes | None) -> tuple[int, list[str], int, str]:
    """One depth-1 fetch of HEAD: (bytes received, blob ids in the tree, blobs received, commit)."""
    client, path = open_client(git_spec(url))
    received = [0]
    trees: dict[bytes, Tree] = {}
    blobs = 0
    commit_tree = b""
    with received_pack(
        client,
        path,
        lambda refs: [refs[b"HEAD"]],
        temp,
        lambda n: received.__setitem__(0, received[0] + n),
        max_bytes=NO_LIMIT,
        depth=1,
        filter_spec=filter_spec,
        ref_prefix=[b"HEAD"],
    ) as pack:
        for obj in iter_objects(pack.file, pack.object_format):
            if isinstance(obj, Tree):
                trees[obj.id] = obj
            elif isinstance(obj, Blob):
                blobs += 1
            elif isinstance(obj, Commit):
                commit_tree = obj.tree
    blob_ids = []
    stack = [commit_tree]
    while stack:
        for entry in trees[stack.pop()].iteritems():
            if entry.mode == 0o40000:
                stack.append(entry.sha)
            else:
                blob_ids.append(entry.sha.decode())
    return received[0], blob_ids, blobs, commit_tree.decode()


def timed(runs: int, work: Callable[[], T]) -> tuple[float, T]:
    """The median seconds of ``runs`` calls of ``work``, and what the last call returned."""
    times = []
    for _ in range(runs - 1):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    result = work()
    times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--limit", type=int, default=16384, help="N for blob:limit=N")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp_dir:
        temp = Path(temp_dir)

        def none_plus_object_info() -> tuple[int, int]:
            received, blob_ids, _, _ = fetch(args.url, temp, b"blob:none")
            client, path = open_client(git_spec(args.url))
            sizes = object_info.query_sizes(client, path, blob_ids)
            assert sizes is not None and len(sizes) == len(set(blob_ids))
            return received, len(blob_ids)

        t_oi, (bytes_oi, files) = timed(args.runs, none_plus_object_info)
        t_lim, res_lim = timed(
            args.runs, lambda: fetch(args.url, temp, b"blob:limit=%d" % args.limit)
        )
        t_all, res_all = timed(args.runs, lambda: fetch(args.url, temp, None))
        bytes_lim, ids, blobs_lim, _ = res_lim
        bytes_all = res_all[0]
        sample = ids[:20]

        def fetch_sample() -> None:
            for oid in sample:
                fetch_one(args.url, temp, oid)

        t_one, _ = timed(1, fetch_sample)

    print(f"{files} files; medians of {args.runs} runs")
    print("| method | time (ms) | bytes received | sizes known |")
    print("|---|---:|---:|---|")
    print(f"| blob:none + object-info | {t_oi * 1000:.0f} | {bytes_oi:,} | all |")
    unknown = len(set(ids)) - blobs_lim
    print(f"| blob:limit={args.limit} | {t_lim * 1000:.0f} | {bytes_lim:,} | all but {unknown} |")
    print(f"| no filter (depth 1) | {t_all * 1000:.0f} | {bytes_all:,} | all |")
    per_blob = t_one / len(sample)
    print(
        f"| one fetch per blob on stat | {per_blob * files * 1000:.0f} (extrapolated: "
        f"{per_blob * 1000:.1f} ms x {files}) | contents of every file | all |"
    )


def fetch_one(url: str, temp: Path, oid: str) -> None:
    client, path = open_client(git_spec(url))
    with received_pack(
        client, path, lambda refs: [oid.encode()], temp, lambda n: None, max_bytes=NO_LIMIT
    ):
        pass


if __name__ == "__main__":
    main()
