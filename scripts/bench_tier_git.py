"""Benchmark: a walk (``grep -r``) of a 2,000-file git repository (4 KiB files, 40
directories) through a read-only mount, three ways in one run: no tier; an empty tier (the
first node of a fleet: every batch of misses asks the tier first); and, on a second state
home, the tier that the second walk filled (a second node: every blob from the tier, none
from the origin). Also: how long after the second walk its write-behind had uploaded all
2,000 blobs. The origin is ``git daemon`` on 127.0.0.1; the tier is moto's S3 server, in a
process of its own, on 127.0.0.1 (tests/helpers/s3.py).

Run it with ``python -m scripts.bench_tier_git SCRATCH_DIR`` (SCRATCH_DIR must not exist).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.helpers.gitrepos import Content, make_repo
from tests.helpers.mounts import mounted, run_cli
from tests.helpers.s3 import running_s3
from tests.helpers.servers import GitDaemon
from tests.helpers.waiting import wait_for

FILES = 2000


def main(base: Path) -> None:
    base.mkdir()
    repos = base / "repos"
    repos.mkdir()
    files: dict[str, Content] = {
        f"d{i % 40}/e{i % 7}/f{i}.txt": os.urandom(4096) for i in range(FILES)
    }
    make_repo(repos, "big.git", files)
    daemon = GitDaemon(repos, trace=False)
    try:
        with running_s3(base / "moto.txt") as s3:
            s3.make_bucket("bench")
            env = {
                "ARTIFACTFS_TIER_URL": "s3://bench/p",
                "ARTIFACTFS_TIER_ENDPOINT": s3.endpoint,
                **s3.env(),
            }

            def held(home: Path) -> int:
                result = run_cli("tier", "status", "--json", home=home, env=env)
                return int(json.loads(result.stdout)["held"])

            def walk(name: str, tier: dict[str, str], then: Callable[[Path], None] | None) -> None:
                slug = name.replace(" ", "-")
                mnt, home = base / f"mnt-{slug}", base / f"home-{slug}"
                with mounted(daemon.url("big.git"), mnt, home, "--read-only", env=tier):
                    started = time.monotonic()
                    subprocess.run(["grep", "-rqc", "no such text", str(mnt)], check=False)
                    print(f"{name}: walk of {FILES} files {time.monotonic() - started:.2f} s")
                    if then is not None:
                        then(home)

            def uploaded(home: Path) -> None:
                started = time.monotonic()
                wait_for(lambda: held(home) >= FILES, 300, "uploads", 0.5)
                took = time.monotonic() - started
                print(f"write-behind: all {FILES} blobs in the tier {took:.1f} s after the walk")

            walk("no tier", {}, None)
            walk("empty tier", env, uploaded)
            walk("warm tier", env, None)
    finally:
        daemon.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
